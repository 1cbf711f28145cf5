"""Remote PACS in the tree: what they have (``catalog``), and fetch-on-open (``fetch``)."""
