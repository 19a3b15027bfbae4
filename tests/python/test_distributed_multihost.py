"""cusense.distributed across two Ray nodes on this machine: the head and a worker node in
separate network namespaces joined by a veth pair (private addresses made here), one partition
placed on each node, and the distributed pipeline's results equal the single pipeline's.
Needs root and `ip netns` (CI runs as root); skips with the reason elsewhere."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid

import pytest

import cusense

pytest.importorskip("ray", reason="cusense.distributed needs Ray (pip install 'cusense[ray]')")

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

DRIVER = textwrap.dedent("""
    import sys
    import numpy as np, ray, cusense, cusense.distributed as cd
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    head, worker, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ray.init(address=f"{head}:6379", _node_ip_address=head, logging_level="ERROR",
             log_to_driver=False)
    nodes = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert sorted(nodes) == sorted([head, worker]), nodes
    place = [{"scheduling_strategy": NodeAffinitySchedulingStrategy(nodes[ip], soft=False)}
             for ip in (head, worker)]
    rng = np.random.default_rng(seed)
    n = 6000
    k = rng.integers(0, 300, n).astype(np.uint32)
    ts = 10_000 + np.arange(n, dtype=np.int64) * 3 - rng.integers(0, 90, n)
    v = rng.normal(10, 3, n)
    kw = dict(aggs=["count", "mean", "std", "first", "p50"], max_out_of_orderness=40, backend="cpu")
    single = cusense.Pipeline(cusense.Session(40), **kw)
    dist = cd.Pipeline(cusense.Session(40), partitions=2, cpu_threads=1, actor_options=place, **kw)
    ips = [ray.get(a.__ray_call__.remote(lambda self: ray.util.get_node_ip_address()))
           for a in dist.workers()]
    assert ips == [head, worker], ips
    got, want = [], []
    for a in range(0, n, 700):
        single.push(k[a:a + 700], ts[a:a + 700], v[a:a + 700], time_unit="ns")
        dist.push(k[a:a + 700], ts[a:a + 700], v[a:a + 700], time_unit="ns")
        got.append(dist.poll())
        want.append(single.poll())
    got.append(dist.flush())
    want.append(single.flush())
    g = cusense.Result.concat(got).to_pandas()
    w = cusense.Result.concat(want).to_pandas()
    assert len(w) > 1000 and g.equals(w), (len(g), len(w))
    assert dist.poll_late().to_pandas().equals(single.poll_late().to_pandas())
    print("rows", len(w), "nodes", ips)
    dist.close()
""")


def _sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def two_namespaces():
    """Two network namespaces joined by a veth pair, with private addresses; removed after,
    with every process left in them."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip netns)")
    tag = uuid.uuid4().hex[:6]
    head, work = f"cs-head-{tag}", f"cs-work-{tag}"
    probe = _sh("ip", "netns", "add", head, check=False)
    if probe.returncode != 0:
        pytest.skip(f"ip netns is not allowed here: {probe.stderr.strip()}")
    try:
        _sh("ip", "netns", "add", work)
        _sh("ip", "link", "add", f"csh{tag}", "type", "veth", "peer", "name", f"csw{tag}")
        _sh("ip", "link", "set", f"csh{tag}", "netns", head)
        _sh("ip", "link", "set", f"csw{tag}", "netns", work)
        octet = int(tag[:2], 16)
        ips = (f"10.213.{octet}.1", f"10.213.{octet}.2")
        for ns, dev, ip in ((head, f"csh{tag}", ips[0]), (work, f"csw{tag}", ips[1])):
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        yield head, work, ips
    finally:
        for ns in (head, work):
            pids = _sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _sh("ip", "netns", "del", ns, check=False)


def test_equal_results_across_two_nodes(two_namespaces, rng):
    head_ns, work_ns, (head_ip, work_ip) = two_namespaces
    if not os.path.exists(RAY):
        pytest.skip("the ray command is not installed next to this Python")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(cusense.__file__)), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="cusense-ray-")
    try:
        common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp}"]
        start = _sh("ip", "netns", "exec", head_ns, RAY, "start", "--head", f"--node-ip-address={head_ip}",
                    "--port=6379", "--include-dashboard=false", *common, env=env, check=False)
        assert start.returncode == 0, start.stdout + start.stderr
        join = _sh("ip", "netns", "exec", work_ns, RAY, "start", f"--address={head_ip}:6379",
                   f"--node-ip-address={work_ip}", *common, env=env, check=False)
        assert join.returncode == 0, join.stdout + join.stderr
        seed = int(rng.integers(0, 2**31))
        run = subprocess.run(["ip", "netns", "exec", head_ns, sys.executable, "-c", DRIVER, head_ip,
                              work_ip, str(seed)], capture_output=True, text=True, timeout=300,
                             env=env)
        assert run.returncode == 0, run.stdout + run.stderr[-5000:]
        assert f"nodes ['{head_ip}', '{work_ip}']" in run.stdout
    finally:
        shutil.rmtree(temp, ignore_errors=True)
