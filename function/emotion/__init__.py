"""Facial-emotion detection: images in, faces with emotions out.  No AWS event
types here: the handlers in ``handlers/`` adapt API Gateway and S3 to this package."""
