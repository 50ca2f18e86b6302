"""The drawn test face now lives with the synthetic camera; re-exported for the inference tests."""

from drivers.camera.pattern import BACKGROUND, SKIN, draw_face, face_image

__all__ = ["BACKGROUND", "SKIN", "draw_face", "face_image"]
