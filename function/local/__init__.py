"""Local-only runners (never in the image): invoke, serve, run_s3."""
