"""The listener's connection guard: PDU size, deadlines, slots and memory, enforced on the bytes.

pynetdicom reads a PDU by trusting its 6-byte header (PS3.8 9.3.1: type, reserved, 32-bit
length) and then blocking until that many bytes have arrived. A peer that announces 4 GiB
grows the listener by whatever it streams; a peer that trickles one byte at a time holds an
association thread (and a slot) for ever. The guard sits between the socket and pynetdicom's
reader, sees every PDU header before its body is read, and decides:

* **PDU size.** A P-DATA-TF or any other PDU after the association announcing more than
  ``listener.max_pdu_size`` (the value we advertise as Maximum Length Received, PS3.8 D.1)
  is answered A-ABORT (service-provider, invalid-PDU-parameter value) and the connection is
  closed before its body is read. The A-ASSOCIATE-RQ has its own bound, :data:`MAX_RQ_PDU`
  (256 KiB: 128 presentation contexts with their transfer syntaxes take about 30 KiB, a User
  Identity item at most 64 KiB), since it arrives before any size is negotiated.
* **Deadlines.** A complete A-ASSOCIATE-RQ within ``association_deadline_s`` of the TCP
  accept (TLS handshake included), each PDU complete within ``pdu_deadline_s`` of its first
  byte. They are absolute: bytes trickling in do not extend them. Past one, the connection
  is closed (A-ABORT first once associated).
* **Memory.** Bytes held for all connections together (PDUs being read, the fragments of a
  message being assembled, the last complete dataset until its C-STORE is answered) are
  kept under ``max_pending_bytes``. A PDU that would go beyond aborts its association; a new
  association is refused (A-ASSOCIATE-RJ rejected-transient, service-provider presentation
  related, temporary-congestion) once less than one ``max_pdu_size`` is left.
* **Slots.** ``max_associations`` connections hold a slot from the TCP accept. With an
  allow-list, the last ``reserved_for_allowed`` of them are only given to a connection whose
  A-ASSOCIATE-RQ names an allowed calling AE title: a connection arriving while only reserved
  slots are left waits (within its deadline) to show its title. At most
  ``max_associations`` such waiting connections exist at once; beyond, and beyond
  ``max_associations_per_address`` connections from one address, a connection is closed at
  once (it has sent nothing yet that could be answered). A waiting connection that cannot
  have a slot is refused with A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded.
* **AE titles.** Called and calling AE titles are checked on the raw bytes (PS3.5 6.2, AE:
  default repertoire without backslash and control characters; leading and trailing spaces
  are padding, trailing NULs are tolerated as padding): anything else is refused
  (A-ASSOCIATE-RJ rejected-permanent, calling or called AE title not recognized) and logged
  with the address, never accepted as a trimmed title.

Every use of pynetdicom's internals is in :class:`_PynetdicomAdapter` and the two classes
next to it; :func:`pynetdicom_contract` states what they rely on and the tests check it, so
an upgrade that changes them fails loudly instead of silently losing the guard.
"""

from __future__ import annotations

import inspect
import logging
import socket
import ssl
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from pynetdicom import _config, evt
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger("dosereg.ingest.listener")

#: Bound on an A-ASSOCIATE-RQ PDU's announced length (see the module docstring).
MAX_RQ_PDU = 256 * 1024

# PDU types (PS3.8 9.3.1)
PDU_ASSOCIATE_RQ = 0x01
PDU_P_DATA = 0x04
PDU_ABORT = 0x07

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result, source, reason
RJ_PERMANENT, RJ_TRANSIENT = 0x01, 0x02
RJ_SOURCE_USER, RJ_SOURCE_PRESENTATION = 0x01, 0x03
RJ_CALLING_AE_NOT_RECOGNIZED, RJ_CALLED_AE_NOT_RECOGNIZED = 0x03, 0x07
RJ_TEMPORARY_CONGESTION, RJ_LOCAL_LIMIT_EXCEEDED = 0x01, 0x02

# A-ABORT (PS3.8 9.3.8): source service-provider, reasons
ABORT_SOURCE_PROVIDER = 0x02
ABORT_REASON_NOT_SPECIFIED, ABORT_INVALID_PARAMETER = 0x00, 0x06

#: Refusal logs for one (address, reason) at most this often (a flood must not fill the disk).
LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Limits:
    """The listener keys the guard enforces (``[listener]``, docs/configuration)."""

    max_pdu_size: int = 65536
    max_pending_bytes: int = 256 * 1024 * 1024
    association_deadline_s: float = 30.0
    pdu_deadline_s: float = 60.0
    max_associations: int = 10
    max_associations_per_address: int = 10
    reserved_for_allowed: int = 2
    allowed_calling_ae_titles: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, lst: Any) -> Limits:
        return cls(
            max_pdu_size=lst.max_pdu_size, max_pending_bytes=lst.max_pending_bytes,
            association_deadline_s=lst.association_deadline_s, pdu_deadline_s=lst.pdu_deadline_s,
            max_associations=lst.max_associations,
            max_associations_per_address=lst.max_associations_per_address,
            reserved_for_allowed=lst.reserved_for_allowed,
            allowed_calling_ae_titles=frozenset(a.strip() for a in lst.allowed_calling_ae_titles),
        )

    @property
    def reserved(self) -> int:
        """Reserved slots in effect: only with an allow-list, never all of them."""
        if not self.allowed_calling_ae_titles:
            return 0
        return min(self.reserved_for_allowed, self.max_associations - 1)

    @property
    def max_connections(self) -> int:
        """Slot holders plus connections waiting to show their calling AE title."""
        return 2 * self.max_associations


@dataclass(frozen=True)
class Refusal:
    """An A-ASSOCIATE-RJ to send, with the reason to log."""

    result: int
    source: int
    reason: int
    why: str
    calling: str = "(calling AE title not read)"

    def pdu(self) -> bytes:
        return b"\x03\x00" + (4).to_bytes(4, "big") + bytes((0, self.result, self.source, self.reason))


def abort_pdu(reason: int) -> bytes:
    """A-ABORT from the service provider (PS3.8 9.3.8)."""
    return b"\x07\x00" + (4).to_bytes(4, "big") + bytes((0, 0, ABORT_SOURCE_PROVIDER, reason))


# -- pure checks on the bytes ------------------------------------------------------------------
def ae_title_problem(raw: bytes) -> str | None:
    """Why a 16-byte AE title field is not a valid AE value (PS3.5 6.2), or None."""
    text = raw.rstrip(b"\0")
    for pos, byte in enumerate(text):
        if byte < 0x20 or byte > 0x7E or byte == 0x5C:
            return f"byte 0x{byte:02X} at position {pos + 1} is outside the DICOM default repertoire"
    if not text.strip(b" "):
        return "it is empty"
    return None


def shown_title(raw: bytes) -> str:
    """An AE title field for a log line: escaped, padding removed."""
    return ascii(raw.rstrip(b"\0").strip(b" ").decode("latin-1"))


def pdv_flags(body: bytes | bytearray) -> list[tuple[int, int]]:
    """(fragment length, message control header) of each PDV item of a P-DATA-TF body.

    PS3.8 9.3.5.1 and E.2: item length (4 bytes), context ID, control header (bit 0: command,
    bit 1: last fragment). A malformed list stops the walk; pynetdicom rejects the PDU.
    """
    out, pos, end = [], 0, len(body)
    while pos + 6 <= end:
        length = int.from_bytes(body[pos:pos + 4], "big")
        if length < 2 or pos + 4 + length > end:
            break
        out.append((length - 2, body[pos + 5]))
        pos += 4 + length
    return out


# -- accounting -----------------------------------------------------------------------------
GENERAL, RESERVED = "general", "reserved"


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection: its slot, its deadlines, the bytes it holds."""

    address: str
    port: int
    accepted_at: float
    slot: str | None = None
    associated: bool = False
    cut: bool = False
    want_header: bool = True
    pdu_type: int = 0
    pdu_length: int = 0
    pdu_deadline: float = 0.0
    transient: int = 0  # a non-P-DATA PDU read last (freed at the next header)
    message: int = 0    # fragments of the message being assembled
    settled: int = 0    # the last complete dataset, until its C-STORE is answered
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peer(self) -> str:
        return f"{self.address}:{self.port}"


class Gate:
    """Slots and memory for all connections together (thread-safe)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        self._by_address: Counter[str] = Counter()
        self._slots: Counter[str] = Counter()
        self._held = 0
        self._by_assoc: weakref.WeakKeyDictionary[Any, Connection] = weakref.WeakKeyDictionary()
        self._logged: dict[tuple[str, str], float] = {}

    # -- reporting --------------------------------------------------------------------------
    @property
    def held(self) -> int:
        return self._held

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"connections": len(self._conns), "general": self._slots[GENERAL],
                    "reserved": self._slots[RESERVED], "held": self._held}

    def warn(self, address: str, key: str, message: str, *args: Any) -> None:
        """A refusal at WARNING, at most once per :data:`LOG_EVERY_S` per address and reason."""
        now = time.monotonic()
        with self._lock:
            last = self._logged.get((address, key))
            if last is not None and now - last < LOG_EVERY_S:
                return
            if len(self._logged) > 10000:
                self._logged.clear()
            self._logged[(address, key)] = now
        log.warning(message, *args)

    # -- life cycle of a connection ---------------------------------------------------------
    def open(self, address: str, port: int) -> Connection | None:
        """A slot (or a wait for a reserved one) for a new TCP connection; None: close it now."""
        lim = self.limits
        with self._lock:
            if self._by_address[address] >= lim.max_associations_per_address:
                why = (f"{self._by_address[address]} connections from this address already "
                       f"(listener.max_associations_per_address = {lim.max_associations_per_address})")
            elif len(self._conns) >= lim.max_connections:
                why = f"{len(self._conns)} connections already (twice listener.max_associations)"
            else:
                conn = Connection(address, port, time.monotonic())
                if self._slots[GENERAL] < lim.max_associations - lim.reserved:
                    conn.slot = GENERAL
                    self._slots[GENERAL] += 1
                self._conns.add(conn)
                self._by_address[address] += 1
                return conn
        self.warn(address, "open", "closed connection from %s:%s at once: %s", address, port, why)
        return None

    def bind(self, assoc: Any, conn: Connection) -> None:
        with self._lock:
            self._by_assoc[assoc] = conn

    def close(self, conn: Connection) -> None:
        with self._lock:
            if conn not in self._conns:
                return
            self._conns.discard(conn)
            self._by_address[conn.address] -= 1
            if not self._by_address[conn.address]:
                del self._by_address[conn.address]
            if conn.slot:
                self._slots[conn.slot] -= 1
            self._held -= conn.transient + conn.message + conn.settled
            conn.transient = conn.message = conn.settled = 0

    # -- the A-ASSOCIATE-RQ -----------------------------------------------------------------
    def admit(self, conn: Connection, body: bytes | bytearray) -> Refusal | None:
        """Check a complete A-ASSOCIATE-RQ body (PS3.8 9.3.2); a refusal, or None to go on."""
        called, calling = bytes(body[4:20]), bytes(body[20:36])
        for raw, which, reason in ((calling, "calling", RJ_CALLING_AE_NOT_RECOGNIZED),
                                   (called, "called", RJ_CALLED_AE_NOT_RECOGNIZED)):
            problem = ae_title_problem(raw)
            if problem:
                return Refusal(RJ_PERMANENT, RJ_SOURCE_USER, reason,
                               f"{which} AE title {shown_title(raw)}: {problem}", shown_title(calling))
        title = calling.rstrip(b"\0").strip(b" ").decode("ascii")
        with self._lock:
            refusal = self._admit_locked(conn, title)
            if refusal is None:
                conn.associated = True
                return None
        return Refusal(refusal.result, refusal.source, refusal.reason, refusal.why, title)

    def _admit_locked(self, conn: Connection, title: str) -> Refusal | None:
        lim = self.limits
        if self._held + lim.max_pdu_size > lim.max_pending_bytes:
            return Refusal(RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_TEMPORARY_CONGESTION,
                           f"{self._held} bytes held for all associations "
                           f"(listener.max_pending_bytes = {lim.max_pending_bytes})")
        if conn.slot:
            return None
        if self._slots[GENERAL] < lim.max_associations - lim.reserved:
            conn.slot = GENERAL
        elif title in lim.allowed_calling_ae_titles and self._slots[RESERVED] < lim.reserved:
            conn.slot = RESERVED
        elif lim.reserved and title not in lim.allowed_calling_ae_titles:
            return Refusal(RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_LOCAL_LIMIT_EXCEEDED,
                           f"only the {lim.reserved} slot(s) reserved for allowed calling AE titles "
                           f"are left (listener.reserved_for_allowed)")
        else:
            return Refusal(RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_LOCAL_LIMIT_EXCEEDED,
                           f"too many associations (listener.max_associations = {lim.max_associations})")
        self._slots[conn.slot] += 1
        return None

    # -- memory -----------------------------------------------------------------------------
    def reserve(self, conn: Connection, length: int) -> bool:
        """Hold ``length`` more bytes for the PDU ``conn`` is about to read, if within the cap."""
        with self._lock:
            self._held -= conn.transient
            conn.transient = 0
            if self._held + length > self.limits.max_pending_bytes:
                return False
            self._held += length
            conn.transient = length
            return True

    def received(self, conn: Connection, body: bytes | bytearray) -> None:
        """A PDU body was read: P-DATA fragments move into the message being assembled."""
        if conn.pdu_type != PDU_P_DATA:
            return
        with self._lock:
            self._held -= conn.transient
            conn.transient = 0
            for length, control in pdv_flags(body):
                conn.message += length
                self._held += length
                if control & 0x02 and control & 0x01:  # last fragment of a command: decoded, small
                    self._held -= conn.message
                    conn.message = 0
                elif control & 0x02:  # last fragment of a dataset: kept until answered
                    self._held -= conn.settled
                    conn.settled, conn.message = conn.message, 0

    def release(self, assoc: Any) -> None:
        """The C-STORE of ``assoc``'s last dataset was answered: its bytes are no longer held."""
        with self._lock:
            conn = self._by_assoc.get(assoc)
            if conn is not None:
                self._held -= conn.settled
                conn.settled = 0


# -- the reader between the socket and pynetdicom --------------------------------------------
class _Expired(Exception):
    pass


class _Reader:
    """Reads one connection's PDUs under the gate's rules (runs in pynetdicom's DUL thread)."""

    def __init__(self, gate: Gate, conn: Connection, raw: socket.socket) -> None:
        self.gate, self.conn, self.raw = gate, conn, raw
        self.timeout = raw.gettimeout()

    def header(self, nr_bytes: int) -> bytearray:
        conn, lim = self.conn, self.gate.limits
        start = time.monotonic()
        conn.pdu_deadline = start + lim.pdu_deadline_s
        if not conn.associated:
            conn.pdu_deadline = min(conn.pdu_deadline, conn.accepted_at + lim.association_deadline_s)
        try:
            head = self._read(nr_bytes, conn.pdu_deadline)
        except _Expired:
            return self._expired()
        if len(head) < 6:
            return head
        conn.pdu_type, conn.pdu_length = head[0], int.from_bytes(head[2:6], "big")
        if self._check_header():
            conn.want_header = False
            return head
        return bytearray()

    def _check_header(self) -> bool:
        conn, lim = self.conn, self.gate.limits
        ptype, length = conn.pdu_type, conn.pdu_length
        if not conn.associated and ptype not in (PDU_ASSOCIATE_RQ, PDU_ABORT):
            self._cut(None, "first", f"sent PDU type 0x{ptype:02X} where an A-ASSOCIATE-RQ was due "
                      "(not a DICOM association request)")
            return False
        bound, key = (MAX_RQ_PDU, "an A-ASSOCIATE-RQ") if ptype == PDU_ASSOCIATE_RQ and not conn.associated \
            else (lim.max_pdu_size, "listener.max_pdu_size")
        if length > bound:
            self._cut(abort_pdu(ABORT_INVALID_PARAMETER), "size",
                      f"announced a PDU of {length} bytes (at most {bound}: {key}); aborted before reading it")
            return False
        if not self.gate.reserve(conn, length):
            if not conn.associated:
                self._refuse(Refusal(RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_TEMPORARY_CONGESTION,
                                     f"{self.gate.held} bytes held for all associations "
                                     f"(listener.max_pending_bytes = {lim.max_pending_bytes})"))
            else:
                self._cut(abort_pdu(ABORT_REASON_NOT_SPECIFIED), "memory",
                          f"a PDU of {length} bytes would exceed listener.max_pending_bytes "
                          f"({lim.max_pending_bytes}, {self.gate.held} held); aborted")
            return False
        return True

    def body(self, nr_bytes: int) -> bytearray:
        conn = self.conn
        try:
            data = self._read(nr_bytes, conn.pdu_deadline)
        except _Expired:
            return self._expired()
        conn.want_header = True
        if len(data) < nr_bytes:
            return data
        if conn.pdu_type == PDU_ASSOCIATE_RQ and not conn.associated:
            refusal = self.gate.admit(conn, data)
            if refusal is not None:
                self._refuse(refusal)
                return bytearray()
        self.gate.received(conn, data)
        return data

    def deadline_passed(self) -> bool:
        """Checked while the DUL polls for data: an association request that never comes."""
        conn = self.conn
        if conn.associated or conn.cut:
            return conn.cut
        if time.monotonic() < conn.accepted_at + self.gate.limits.association_deadline_s:
            return False
        self._cut(None, "deadline", "no complete A-ASSOCIATE-RQ within "
                  f"listener.association_deadline_s ({self.gate.limits.association_deadline_s:g} s)")
        return True

    def _expired(self) -> bytearray:
        conn, lim = self.conn, self.gate.limits
        if conn.associated:
            self._cut(abort_pdu(ABORT_REASON_NOT_SPECIFIED), "deadline",
                      f"a PDU not complete within listener.pdu_deadline_s ({lim.pdu_deadline_s:g} s); aborted")
        else:
            self._cut(None, "deadline", "no complete A-ASSOCIATE-RQ within listener.association_deadline_s "
                      f"({lim.association_deadline_s:g} s) or a PDU within listener.pdu_deadline_s "
                      f"({lim.pdu_deadline_s:g} s)")
        return bytearray()

    def _read(self, n: int, deadline: float) -> bytearray:
        """Exactly ``n`` bytes, fewer if the peer closes; :class:`_Expired` past ``deadline``."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        try:
            while got < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Expired
                self.raw.settimeout(remaining)
                k = self.raw.recv_into(view[got:], n - got)
                if not k:
                    break
                got += k
        except TimeoutError:
            raise _Expired from None
        except OSError:
            pass  # reset by the peer: a short read, pynetdicom closes the transport
        finally:
            view.release()
            try:
                self.raw.settimeout(self.timeout)
            except OSError:
                pass
        if got < n:
            del buf[got:]
        return buf

    def _refuse(self, refusal: Refusal) -> None:
        self.gate.warn(self.conn.address, f"rj{refusal.reason}",
                       "refused association from %s (%s): %s (A-ASSOCIATE-RJ result %d source %d reason %d)",
                       refusal.calling, self.conn.peer, refusal.why, refusal.result, refusal.source,
                       refusal.reason)
        self._close(refusal.pdu())

    def _cut(self, pdu: bytes | None, key: str, why: str) -> None:
        self.gate.warn(self.conn.address, key, "closed connection from %s: %s", self.conn.peer, why)
        self._close(pdu)

    def _close(self, pdu: bytes | None) -> None:
        self.conn.cut = True
        _quiet.cut = True
        try:
            if pdu is not None:
                self.raw.settimeout(1.0)
                self.raw.sendall(pdu)
        except OSError:
            pass
        try:
            self.raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- the one place that knows pynetdicom's internals -------------------------------------------
_quiet = threading.local()


class _QuietAfterCut(logging.Filter):
    """pynetdicom's reader logs a connection the guard closed as an error ("shorter than
    expected"); the guard has already logged why, so those lines are dropped for that thread."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "cut", False)


class _GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper with :class:`_Reader` in its ``recv`` and ``ready``.

    pynetdicom's DUL reads a PDU as ``recv(6)`` (the header) then ``recv(length)``
    (``DULServiceProvider._read_pdu_data``); the reader follows that rhythm.
    """

    _dosereg_reader: _Reader

    def recv(self, nr_bytes: int) -> bytearray:
        reader = self._dosereg_reader
        if reader.conn.cut:
            return bytearray()
        if reader.conn.want_header:
            return reader.header(nr_bytes)
        return reader.body(nr_bytes)

    @property
    def ready(self) -> bool:
        if self._dosereg_reader.deadline_passed():
            return True  # the reader returns nothing: pynetdicom closes the transport
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]


class _GuardedHandler(RequestHandler):
    """Admits the connection at the gate, handshakes TLS within the deadline, runs the
    association in this thread's lifetime so that its slot is freed when it ends."""

    def handle(self) -> None:
        server: GuardedServer = self.server  # type: ignore[assignment]
        gate = server.gate
        address, port = str(self.client_address[0]), int(self.client_address[1])
        conn = gate.open(address, port)
        if conn is None:
            return
        try:
            if isinstance(self.request, ssl.SSLSocket) and not self._handshake(conn, gate):
                return
            assoc = self._create_association()
            sock = assoc.dul.socket
            assert isinstance(sock, AssociationSocket)
            sock.__class__ = _GuardedSocket
            cast(_GuardedSocket, sock)._dosereg_reader = _Reader(gate, conn, self.request)
            gate.bind(assoc, conn)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            gate.close(conn)

    def _handshake(self, conn: Connection, gate: Gate) -> bool:
        sock: ssl.SSLSocket = self.request
        timeout = sock.gettimeout()
        try:
            sock.settimeout(max(0.01, conn.accepted_at + gate.limits.association_deadline_s - time.monotonic()))
            sock.do_handshake()
            sock.settimeout(timeout)
            return True
        except (OSError, ValueError) as exc:
            gate.warn(conn.address, "tls", "closed connection from %s: TLS handshake failed or not complete "
                      "within listener.association_deadline_s: %s", conn.peer, exc)
            return False


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the guarded handler and a TLS handshake off the accept loop."""

    daemon_threads = True
    block_on_close = False
    gate: Gate

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if self.ssl_context:
            # The handshake happens in the connection's own thread, under its deadline:
            # done here, one silent client would stop every accept.
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


def wake_acceptor(event: Any) -> None:
    """EVT_CONN_CLOSE: a connection closed before any A-ASSOCIATE-RQ (a port probe, or cut by
    the guard) would keep pynetdicom's acceptor thread waiting ``acse_timeout_s`` for one."""
    assoc = event.assoc
    if not assoc.is_established and assoc.requestor.primitive is None:
        assoc.dul.to_user_queue.put(None)


def _any_uid(value: str) -> tuple[bool, str]:
    return True, ""


def start_server(ae: Any, address: tuple[str, int], gate: Gate, *, evt_handlers: list[Any],
                 ssl_context: ssl.SSLContext | None) -> GuardedServer:
    """``ae.start_server(address, block=False, ...)`` with the guard in place.

    pynetdicom's own UID validator (``_config.VALIDATORS["UI"]``, a documented setting) is
    replaced in this process by one that accepts anything: otherwise a C-STORE-RQ whose
    Affected SOP Instance UID has 65 characters is dropped while decoding and answered
    A-ABORT, where the listener's own check (:mod:`dosereg.ingest.storecheck`) answers it
    0xC000 with the reason.
    """
    _config.VALIDATORS["UI"] = _any_uid
    logging.getLogger("pynetdicom.dul").addFilter(_QUIET_FILTER)
    handlers = [*evt_handlers, (evt.EVT_CONN_CLOSE, wake_acceptor)]
    server: GuardedServer = ae.make_server(
        address, ssl_context=ssl_context, evt_handlers=handlers,
        server_class=GuardedServer, request_handler=_GuardedHandler,
    )
    server.gate = gate
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer@dosereg", daemon=True)
    thread.start()
    ae._servers.append(server)  # AssociationServer.shutdown() removes it from there
    return server


_QUIET_FILTER = _QuietAfterCut()


def pynetdicom_contract() -> list[str]:
    """What the guard relies on in pynetdicom, each still true? The list of what is not.

    Run by the tests: a pynetdicom upgrade that breaks one of these fails them loudly.
    """
    from pynetdicom import ae as ae_module
    from pynetdicom import association, dul

    broken: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            broken.append(what)

    read_src = inspect.getsource(dul.DULServiceProvider._read_pdu_data)
    need("self.socket.recv(6)" in read_src and "self.socket.recv(pdu_length)" in read_src,
         "DULServiceProvider._read_pdu_data reads recv(6) then recv(pdu_length)")
    need("self.socket.ready" in inspect.getsource(dul.DULServiceProvider._is_transport_event),
         "DULServiceProvider._is_transport_event polls socket.ready")
    need(list(inspect.signature(AssociationSocket.recv).parameters) == ["self", "nr_bytes"],
         "AssociationSocket.recv(self, nr_bytes)")
    need(isinstance(AssociationSocket.__dict__.get("ready"), property), "AssociationSocket.ready is a property")
    need(not hasattr(AssociationSocket, "__slots__"), "AssociationSocket has no __slots__ (class swap)")
    create_src = inspect.getsource(RequestHandler._create_association)
    need("AssociationSocket(assoc, client_socket=self.request)" in create_src and "set_socket" in create_src,
         "RequestHandler._create_association wraps self.request in an AssociationSocket")
    handle_src = inspect.getsource(RequestHandler.handle)
    need("_create_association" in handle_src and "EVT_CONN_OPEN" in handle_src and "assoc.start()" in handle_src,
         "RequestHandler.handle creates, announces and starts the association")
    need("request_handler" in inspect.signature(ThreadedAssociationServer.__init__).parameters,
         "AssociationServer(..., request_handler=...)")
    make = inspect.signature(ae_module.ApplicationEntity.make_server).parameters
    need("server_class" in make and any(p.kind is p.VAR_KEYWORD for p in make.values()),
         "ApplicationEntity.make_server(..., server_class=..., **kwargs)")
    need("self.ae._servers.remove" in inspect.getsource(ThreadedAssociationServer.shutdown),
         "AssociationServer.shutdown removes itself from ae._servers")
    need("self.dul.receive_pdu(wait=True, timeout=self.acse_timeout)"
         in inspect.getsource(association.Association.run_reactor),
         "Association.run_reactor waits on dul.to_user_queue for the A-ASSOCIATE-RQ")
    need(callable(_config.VALIDATORS.get("UI")), "pynetdicom._config.VALIDATORS['UI']")
    need("to_user_queue" in inspect.getsource(dul.DULServiceProvider.receive_pdu),
         "DULServiceProvider.receive_pdu reads to_user_queue")
    return broken


__all__ = [
    "Connection", "Gate", "GuardedServer", "Limits", "MAX_RQ_PDU", "Refusal", "abort_pdu",
    "ae_title_problem", "pdv_flags", "pynetdicom_contract", "start_server", "wake_acceptor",
]
