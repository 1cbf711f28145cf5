"""Who may use the node: allow-list entries, configured remotes, and where the node listens.

Resolved once at start (host names become addresses then), so a decision per association
is a few comparisons. The rules, as Orthanc's defaults and stricter where they are loose:

- On loopback an empty service list admits every local caller: the first ``dicomfs serve``
  is usable by local tools and by nobody else.
- Beyond loopback an empty list admits nobody, unless ``allow_any`` says otherwise; a node
  with no declared peer at all refuses to start (``check_opening``).
- A non-empty list admits only its entries, on loopback too.
- Configured remotes may always store: a remote we retrieve from by C-MOVE sends back.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from dicomfs.config import DicomSettings
from dicomfs.errors import UserError

GROUPS = ("store", "query", "retrieve")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PeerError(UserError):
    """An allow-list entry or the bind address cannot be used."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry: an AE title (None: any) from a set of networks (empty: any host)."""

    ae: str | None
    hosts: tuple[_Network, ...]
    text: str

    def admits(self, ae: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        if self.ae is not None and self.ae != ae:
            return False
        if not self.hosts:
            return True
        return address is not None and any(address in network for network in self.hosts)


@dataclass(frozen=True, slots=True)
class Policy:
    """The decision for each service group, given the calling AE title and host."""

    rules: dict[str, tuple[Rule, ...]]
    open_groups: frozenset[str]  # empty lists that admit anyone (loopback or allow_any)

    def may(self, group: str, ae: str, host: str) -> bool:
        if group in self.open_groups:
            return True
        address = peer_address(host)
        return any(rule.admits(ae, address) for rule in self.rules[group])

    def describe(self) -> str:
        """One line for the log: who may do what."""
        parts = []
        for group in GROUPS:
            if group in self.open_groups:
                who = "anyone"
            else:
                who = ", ".join(rule.text for rule in self.rules[group]) or "nobody"
            parts.append(f"{group}: {who}")
        return "; ".join(parts)


def build_policy(settings: DicomSettings, loopback: bool) -> Policy:
    allow = settings.allow
    rules: dict[str, tuple[Rule, ...]] = {}
    open_groups = set()
    for group in GROUPS:
        entries = getattr(allow, group)
        rules[group] = tuple(parse_rule(entry, group) for entry in entries)
        if not entries and (loopback or settings.allow_any):
            open_groups.add(group)
    remotes = tuple(_remote_rule(r.ae_title, r.host, r.name) for r in settings.remotes)
    rules["store"] += tuple(rule for rule in remotes if rule is not None)
    return Policy(rules, frozenset(open_groups))


def parse_rule(entry: str, group: str) -> Rule:
    ae, _, host = entry.strip().partition("@")
    ae = ae.strip()
    if not ae:
        raise PeerError(f"[dicom.allow] {group}: entry {entry!r} has no AE title: write \"AE\", \"AE@host\" "
                        "or \"*@host\"")
    hosts = _networks(host.strip(), f"[dicom.allow] {group}: entry {entry!r}") if host.strip() else ()
    return Rule(None if ae == "*" else ae, hosts, entry.strip())


def _remote_rule(ae: str, host: str, name: str) -> Rule | None:
    try:
        return Rule(ae, _networks(host, f"remote {name!r}"), f"{ae}@{host} (remote {name})")
    except PeerError:
        return None  # an unresolvable remote is reported when it is used; it just cannot send to us


def _networks(host: str, where: str) -> tuple[_Network, ...]:
    try:
        return (ipaddress.ip_network(host, strict=False),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        raise PeerError(f"{where}: host {host!r} does not resolve: give an address, a network "
                        "(10.1.2.0/24) or a resolvable name") from None
    return tuple(dict.fromkeys(ipaddress.ip_network(info[4][0]) for info in infos))


def peer_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def listens_on_loopback_only(bind: str) -> bool:
    """True when every address ``bind`` names is a loopback address (raises for a bad name)."""
    try:
        infos = socket.getaddrinfo(bind, None, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)
    except OSError:
        raise PeerError(f"cannot listen on {bind!r}: no such address; give --bind (or [dicom] bind) an address "
                        "of this host, e.g. 127.0.0.1 (local tools only) or 0.0.0.0 (every interface)") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_opening(settings: DicomSettings, loopback: bool) -> None:
    """A node reachable from other hosts must say who may use it."""
    if loopback or settings.allow_any or settings.allow.declared() or settings.remotes:
        return
    raise PeerError(
        f"the DICOM node would listen on {settings.bind}:{settings.port}, beyond loopback, with no declared "
        "peers: declare them in [dicom.allow] (store/query/retrieve = [\"AE@host\"]), or set allow_any = true "
        "in [dicom] to admit anyone, or bind 127.0.0.1")
