"""pynetdicom's own ceiling: a Storage SCP that takes each dataset's bytes and discards them.

Same server setup as dicomfs (TCP_NODELAY, unlimited PDU, all storage classes and transfer
syntaxes), nothing parsed or written: what dicomfs could reach with free storage.

    python -m bench.null_scp PORT
"""

from __future__ import annotations

import socket
import sys

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer


class _NoDelayServer(ThreadedAssociationServer):
    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def _discard(event: evt.Event) -> int:
    event.encoded_dataset(include_meta=False)
    return 0x0000


def main() -> None:
    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE("NULLSCP")
    ae.maximum_pdu_size = 0
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)  # for the echo figure
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.make_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, _discard)],
                            server_class=_NoDelayServer)
    server.serve_forever()


if __name__ == "__main__":
    main()
