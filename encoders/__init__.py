"""Video decoding, frame sampling and frame encoders (CLIP, thumbnail), and the build pipeline.

Sub-packages: ``encoders.video`` (decoding and sampling; PyAV only, runs in decode workers, so it
must not pull in torch), ``encoders.build`` (the build pipeline), ``encoders.download`` (the
downloader). The frame encoders (``base``, ``clip_encoder``, ``thumbnail``, ``registry``,
``queries``) sit at the top.
"""
