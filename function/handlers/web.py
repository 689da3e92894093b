"""What the API serves besides analyses: the demo page and the OpenAPI contract
(function/web/, beside the code in the image too).  Read on first use, not at init:
a cold start that only analyses never pays for them."""
from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "web"
_CSP_META = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"')
_INLINE = {"script": re.compile(r"<script>(.*?)</script>", re.S), "style": re.compile(r"<style>(.*?)</style>", re.S)}


def csp_for(html: str) -> str:
    """The page's policy: nothing from anywhere but its own inline script and style (by
    their sha256), blob: pictures (the photo and snapshot), requests to its own origin."""
    hashes = {kind: " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
                             for text in pattern.findall(html)) for kind, pattern in _INLINE.items()}
    return (f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
            "img-src blob:; media-src blob: mediastream:; connect-src 'self'; base-uri 'none'; form-action 'none'")


@cache
def contract_json() -> str:
    """function/web/openapi.yaml as JSON."""
    import yaml

    return json.dumps(yaml.safe_load((WEB / "openapi.yaml").read_text(encoding="utf-8")))


@cache
def page() -> tuple[str, str]:
    """The demo page and the Content-Security-Policy it sets in its <meta> tag, which
    the response repeats as a header with what only a header can say (frame-ancestors)."""
    html = (WEB / "index.html").read_text(encoding="utf-8")
    match = _CSP_META.search(html)
    if not match:
        raise RuntimeError("function/web/index.html sets no Content-Security-Policy")
    return html, f"{match.group(1)}; frame-ancestors 'none'"


if __name__ == "__main__":  # after editing the page: python -m handlers.web (rewrites its policy)
    path = WEB / "index.html"
    text = path.read_text(encoding="utf-8")
    path.write_text(_CSP_META.sub(lambda m: m.group(0).replace(m.group(1), csp_for(text)), text), encoding="utf-8")
    print(csp_for(text))
