"""The MMV model's names: its backbones and its outputs' keys.

Free of JAX and haiku, so that command lines, dataset specs and ingestion
workers can name a backbone or an output without loading the model
(`mmv_core.models.mmv` builds it and imports these).
"""

S3D = "s3d"
TSM_RESNET_X1 = "tsm_resnet_x1"
TSM_RESNET_X2 = "tsm_resnet_x2"
BACKBONES = (S3D, TSM_RESNET_X1, TSM_RESNET_X2)

# Output keys of `mmv.video_embeddings`: the visual representation (the
# UCF101 feature) and its projections into the joint spaces.
VID_REPR = "vid_repr"
VIDEO_AUDIO = "video_audio"
VIDEO_TEXT = "video_text"
# Output keys of `mmv.audio_embeddings` and `mmv.text_embeddings`.
AUDIO_REPR = "audio_repr"
AUDIO_VIDEO = "audio_video"
AUDIO_TEXT = "audio_text"
TEXT_REPR = "text_repr"
TEXT_VIDEO = "text_video"
TEXT_AUDIO = "text_audio"
# What a video embedder can return, in this order.
VIDEO_OUTPUTS = (VID_REPR, VIDEO_AUDIO, VIDEO_TEXT)
