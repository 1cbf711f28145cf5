"""The DICOM network: our node (``scp``), our requests to other nodes (``scu``)."""
