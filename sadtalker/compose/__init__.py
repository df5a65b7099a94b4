"""Compositing rendered frames: aspect resize, full-mode paste into the photo, face enhancement.

``FaceEnhancer`` lives in ``sadtalker.compose.enhance`` (imported explicitly: it pulls in torch and gfpgan).
"""

from sadtalker.compose.paste import PasteBox, aspect_resize, aspect_size, paste_frame, paste_frames

__all__ = ["PasteBox", "aspect_resize", "aspect_size", "paste_frame", "paste_frames"]
