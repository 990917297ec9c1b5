"""The TensorRT plugin for modulated deformable convolution (Triton kernel + QDP definition)."""
