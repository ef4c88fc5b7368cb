"""Video decoding, frame sampling and frame encoders (CLIP, thumbnail), and the build pipeline.

Submodules are imported on demand: ``encoders.sampling`` (PyAV only, runs in decode workers)
must not pull in torch.
"""
