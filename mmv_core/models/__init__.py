"""dm-haiku implementations of the MMV networks.

`mmv` is the whole model and its pure-function API (and `Formulation`, the
faster ways to compute the same features); `s3d`, `tsm_resnet`, `audio`,
`text` are the towers; `normalization` holds BatchNorm as the checkpoints
store it and its folding into kernels; `convolution` the bias-free
convolutions with their faster equivalents; `names` the backbone and output
names. Checkpoints are read by `mmv_core.checkpoints`; `mmv_core.embedder`
runs the model batched on every local device.
"""
