"""smartbin host training: fine-tune MobileNetV2, evaluate, quantise, write a model bundle.

Runs on a workstation (GPU or CPU). Imports TensorFlow; the edge never imports this package.
"""
