"""Classical (non-deep) image analysis baselines: fuzzy c-means segmentation."""

from .fcm import FCMResult, connected_instances, fcm_memberships, fcm_segment, fuzzy_cmeans

__all__ = ["FCMResult", "connected_instances", "fcm_memberships", "fcm_segment", "fuzzy_cmeans"]
