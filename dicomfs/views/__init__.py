"""Generated views of an instance (``render``: ``.json``, ``.jpg``) and of a folder (``summary``).

Importing the package costs nothing: ``jpeg_size`` (the size every ``.jpg`` will have, which
listings need) works without numpy, Pillow or pydicom.
"""
