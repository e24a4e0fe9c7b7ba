"""Point-to-point state transport (workers.p2p) between two real processes.

The peer is a spawned process (one for the whole module, so the interpreter start is
paid once); the test process is the other end. Gloo on CPU is what runs everywhere;
the NCCL variant needs two CUDA devices.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import socket
import time

import pytest
import torch

from kernels.state import SessionState
from workers.errors import TransferError
from workers.host_buffers import receive_pool
from workers.p2p import P2PEndpoint, TransferStats, recv_state, send_state
from workers.p2p_group import Rendezvous, choose_backend, device_key, free_port

JOIN_TIMEOUT_S = 20.0  # generous: the two ends share 2 loaded cores in CI


def make_state(seed: int = 0, scale: int = 1, device: str = "cpu") -> SessionState:
    """A state with every dtype a session holds, a non-contiguous tensor, and a 0-d one."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "prompt_embeds": torch.randn(8, 16 * scale, generator=g),
        "kv.0.k": torch.randn(2, 5 * scale, 8, generator=g).bfloat16(),
        "kv.0.v": torch.randn(2, 5 * scale, 8, generator=g).bfloat16(),
        "kv.1.k": torch.randn(2, 5 * scale, 8, generator=g).half(),
        "rng": torch.randint(0, 256, (5056,), dtype=torch.uint8, generator=g),
        "positions": torch.arange(24 * scale, dtype=torch.int64).reshape(4, -1).t(),
        "vae.0": torch.tensor(float(seed)),
    }
    state = SessionState(
        model="tiny", prompt=f"a red fox {seed}", seed=seed, height=64, width=64, chunk_index=3 + seed,
        tensors=tensors, scalars={"vae.count": 1, "cache_len": 5 * scale},
    )
    return state.to(device) if device != "cpu" else state


# ------------------------------------------------------------------ peer-side helpers


def peer_recv(rdv: Rendezvous, device: str = "cpu") -> tuple[SessionState, str]:
    state = recv_state(rendezvous=rdv, device=device, timeout=JOIN_TIMEOUT_S)
    return state.to("cpu"), str(state.device)


def peer_send(rdv: Rendezvous, seed: int, device: str = "cpu") -> TransferStats:
    return send_state(make_state(seed, device=device), rendezvous=rdv, timeout=JOIN_TIMEOUT_S)


def peer_recv_many(rdv: Rendezvous, n: int) -> list[SessionState]:
    with P2PEndpoint(rdv, role="recv", timeout=JOIN_TIMEOUT_S) as ep:
        return [ep.recv() for _ in range(n)]


def peer_ping() -> int:
    return os.getpid()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.fixture(scope="module")
def peer():
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        assert pool.submit(peer_ping).result(timeout=120) != os.getpid()
        yield pool


# ------------------------------------------------------------------ records and choices


def test_rendezvous_rejects_bad_fields_naming_them():
    with pytest.raises(ValueError, match="'mpi'"):
        Rendezvous("127.0.0.1", 1234, "mpi", "t")
    with pytest.raises(ValueError, match="70000"):
        Rendezvous("127.0.0.1", 70000, "gloo", "t")
    with pytest.raises(ValueError, match="transfer_id"):
        Rendezvous("127.0.0.1", 1234, "gloo", "")
    rdv = Rendezvous.new("gloo")
    assert rdv.backend == "gloo" and 0 < rdv.port < 65536 and rdv.transfer_id != Rendezvous.new().transfer_id


@pytest.mark.parametrize(
    ("src", "dst", "nccl", "expected"),
    [
        ("cuda:0", "cuda:1", True, "nccl"),
        ("cuda:0", "cuda:1", False, "gloo"),
        ("cpu", "cpu", True, "gloo"),
        ("cuda:0", "cpu", True, "gloo"),
        ("cpu", "cuda:1", True, "gloo"),
        ("meta", "cpu", True, None),
    ],
)
def test_choose_backend(src, dst, nccl, expected):
    assert choose_backend(src, dst, nccl_available=nccl) == expected


def test_two_processes_on_one_gpu_get_gloo_since_nccl_refuses_them():
    assert choose_backend("cuda:0", "cuda:0", nccl_available=True, same_physical_device=True) == "gloo"


def test_device_key_names_the_host_and_device_type():
    assert device_key("cpu") == f"{socket.gethostname()}/cpu"


@pytest.mark.gpu
def test_device_key_of_a_gpu_is_independent_of_how_it_is_spelled():
    index = torch.cuda.current_device()
    assert device_key(f"cuda:{index}") == device_key("cuda") == device_key(torch.device("cuda", index))
    assert device_key("cuda").startswith(f"{socket.gethostname()}/cuda/")


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# ------------------------------------------------------------------ gloo between two processes


def test_state_crosses_processes_bit_exact(peer):
    rdv = Rendezvous.new("gloo")
    received = peer.submit(peer_recv, rdv)
    stats = send_state(make_state(1), rendezvous=rdv, timeout=JOIN_TIMEOUT_S)
    state, device = received.result(timeout=60)
    assert device == "cpu"
    assert state.equal(make_state(1))
    assert list(state.tensors) == list(make_state(1).tensors)  # name order kept
    assert stats.nbytes == make_state(1).nbytes and stats.n_tensors == 7
    # the head (header and meta), and one message per dtype (float32, bfloat16, float16, uint8, int64)
    assert stats.n_messages == 1 + 5


def test_the_sender_listens_only_on_the_rendezvous_host(peer):
    """The store is on the sender's own address (its Dask address), not on every interface."""
    rdv = Rendezvous.new("gloo")  # 127.0.0.1
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        sent = pool.submit(send_state, make_state(2), rendezvous=rdv, timeout=JOIN_TIMEOUT_S)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while True:  # until the sender listens
            try:
                socket.create_connection(("127.0.0.1", rdv.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the sender never listened"
                time.sleep(0.05)
        # Another address of this machine: taken too if the store listened on all interfaces.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
            other.bind(("127.0.0.2", rdv.port))
        received = peer.submit(peer_recv, rdv)
        assert received.result(timeout=60)[0].equal(make_state(2))
        assert sent.result(timeout=60).nbytes == make_state(2).nbytes


def test_two_transfers_in_a_row_each_way_leak_no_descriptors_or_threads(peer):
    # The first group of a process opens gloo's lasting resources; count after it.
    def one_round(seed: int) -> None:
        rdv = Rendezvous.new("gloo")
        received = peer.submit(peer_recv, rdv)
        send_state(make_state(seed), rendezvous=rdv, timeout=JOIN_TIMEOUT_S)
        assert received.result(timeout=60)[0].equal(make_state(seed))
        rdv = Rendezvous.new("gloo")
        sent = peer.submit(peer_send, rdv, seed + 100)
        assert recv_state(rendezvous=rdv, timeout=JOIN_TIMEOUT_S).equal(make_state(seed + 100))
        assert sent.result(timeout=60).nbytes == make_state(seed + 100).nbytes

    one_round(2)
    fds, threads = open_fds(), os_threads()
    one_round(3)
    one_round(4)
    assert open_fds() <= fds
    assert os_threads() <= threads


def test_one_endpoint_carries_several_states_in_order(peer):
    rdv = Rendezvous.new("gloo")
    received = peer.submit(peer_recv_many, rdv, 3)
    with P2PEndpoint(rdv, role="send", timeout=JOIN_TIMEOUT_S) as ep:
        sizes = [ep.send(make_state(seed, scale=seed + 1)).nbytes for seed in range(3)]
    states = received.result(timeout=60)
    assert [s.equal(make_state(i, scale=i + 1)) for i, s in enumerate(states)] == [True] * 3
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def peer_recv_long_prompt(rdv: Rendezvous) -> bool:
    return recv_state(rendezvous=rdv, timeout=JOIN_TIMEOUT_S).equal(long_prompt_state())


def long_prompt_state() -> SessionState:
    state = make_state(8)
    state.prompt = "a red fox running through snow " * 4000  # ~124 KB of meta: more than the head holds
    return state


def test_a_meta_larger_than_the_head_follows_in_a_second_message(peer):
    rdv = Rendezvous.new("gloo")
    received = peer.submit(peer_recv_long_prompt, rdv)
    stats = send_state(long_prompt_state(), rendezvous=rdv, timeout=JOIN_TIMEOUT_S)
    assert received.result(timeout=60) is True
    assert stats.n_messages == 2 + 5


def peer_recv_twice_dropping_the_first(rdv: Rendezvous) -> tuple[bool, int, int]:
    pool = receive_pool()
    with P2PEndpoint(rdv, role="recv", timeout=JOIN_TIMEOUT_S) as ep:
        loans = pool.allocated + pool.reused
        first = ep.recv()
        loans = pool.allocated + pool.reused - loans
        ok = first.equal(make_state(9, scale=64))
        del first  # the session left: its buffers go back to the pool
        allocated = pool.allocated
        second = ep.recv()
        return ok and second.equal(make_state(10, scale=64)), loans, pool.allocated - allocated


def test_a_received_state_lands_in_buffers_the_previous_one_gave_back(peer):
    rdv = Rendezvous.new("gloo")
    received = peer.submit(peer_recv_twice_dropping_the_first, rdv)
    with P2PEndpoint(rdv, role="send", timeout=JOIN_TIMEOUT_S) as ep:
        ep.send(make_state(9, scale=64))
        ep.send(make_state(10, scale=64))
    # bit-exact; one loan per dtype (5); no new buffer for the second state
    assert received.result(timeout=60) == (True, 5, 0)


def test_large_tensors_go_without_staging_and_messages_stay_bounded(peer, monkeypatch):
    # Only the sender is patched: the receiver learns the sizes from the header.
    monkeypatch.setattr("workers.p2p.DIRECT_MIN_BYTES", 2048)
    monkeypatch.setattr("workers.p2p.MAX_MESSAGE_BYTES", 4096)
    state = make_state(5, scale=64)
    rdv = Rendezvous.new("gloo")
    received = peer.submit(peer_recv, rdv)
    stats = send_state(state, rendezvous=rdv, timeout=JOIN_TIMEOUT_S)
    assert received.result(timeout=60)[0].equal(state)
    assert stats.n_messages - 1 >= state.nbytes / 4096
    # Only the non-contiguous "positions" and the small 0-d tensor are staged.
    assert stats.staged_bytes == state.tensors["positions"].numel() * 8 + 4


# ------------------------------------------------------------------ failures


def test_recv_without_a_sender_fails_fast_with_transfer_error():
    rdv = Rendezvous.new("gloo")
    t0 = time.perf_counter()
    with pytest.raises(TransferError, match=f"{rdv.transfer_id}.*sender did not open"):
        recv_state(rendezvous=rdv, timeout=1.0)
    assert time.perf_counter() - t0 < 8.0


def test_send_without_a_receiver_fails_fast_with_transfer_error():
    rdv = Rendezvous.new("gloo")
    t0 = time.perf_counter()
    with pytest.raises(TransferError, match="peer did not join within 1s"):
        send_state(make_state(), rendezvous=rdv, timeout=1.0)
    assert time.perf_counter() - t0 < 8.0


def test_send_on_a_taken_port_fails_with_transfer_error():
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        rdv = Rendezvous("127.0.0.1", s.getsockname()[1], "gloo", "taken")
        with pytest.raises(TransferError, match="port is probably taken"):
            send_state(make_state(), rendezvous=rdv, timeout=1.0)


def test_endpoint_used_before_connect_says_so():
    ep = P2PEndpoint(Rendezvous.new("gloo"), role="send", timeout=1.0)
    with pytest.raises(TransferError, match="not connected"):
        ep.send(make_state())
    with pytest.raises(ValueError, match="'both'"):
        P2PEndpoint(Rendezvous.new("gloo"), role="both")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_nccl_without_cuda_is_refused_before_any_connection():
    with pytest.raises(TransferError, match="'nccl' needs a CUDA device"):
        P2PEndpoint(Rendezvous.new("nccl"), role="recv", timeout=1.0)


# ------------------------------------------------------------------ CUDA


@pytest.mark.gpu
def test_gloo_stages_a_cuda_state_through_host_memory(peer):
    rdv = Rendezvous.new("gloo")
    received = peer.submit(peer_recv, rdv, "cuda:0")
    send_state(make_state(6, device="cuda:0"), rendezvous=rdv, timeout=JOIN_TIMEOUT_S)
    state, device = received.result(timeout=60)
    assert device == "cuda:0"
    assert state.equal(make_state(6))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two CUDA devices (it refuses two ranks on one GPU)")
def test_nccl_moves_a_state_between_two_gpus(peer):
    rdv = Rendezvous.new("nccl")
    received = peer.submit(peer_recv, rdv, "cuda:1")
    stats = send_state(make_state(7, device="cuda:0"), rendezvous=rdv, timeout=JOIN_TIMEOUT_S)
    state, device = received.result(timeout=120)
    assert device == "cuda:1" and stats.backend == "nccl"
    assert state.equal(make_state(7))
