"""The mount: the archive as a tree of folders and files (pyfuse3 + trio).

``model`` and ``layouts`` say what each folder holds (no pyfuse3); ``tree`` caches that with
the kernel's attributes and forgets what the change log says is stale; ``operations`` answers
the kernel; ``watch`` follows the change log. See docs/architecture.md.
"""
