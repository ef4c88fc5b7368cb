"""Videos as pixels: exact and keyframe frame sampling with PyAV (``sampling``), frames turned
and converted as a person sees them (``orientation``: display matrices; ``convert``: FFmpeg's
own filters), resize/crop geometry shared with the encoders (``geometry``), contact sheets of
search hits (``sheet``) and synthetic test videos (``synthetic``). Nothing here imports torch:
it runs in decode workers.
"""
