"""The NVIDIA driver role on an inference host without a GPU: a safe no-op that says so, and,
forced in check mode, the repository and packages it would install, changing nothing."""

import json

import pytest
from fleet import apps
from playbook_runner import run_playbook

app = apps[0]
BLACKLIST = "/etc/modprobe.d/blacklist-nouveau.conf"


def run_role(*extra: str):
    return run_playbook(
        "playbooks/inference.yml", "--limit", "fleet-app1", "--tags", "nvidia_driver", *extra
    )


def forced_check(**settings):
    result = run_role("--check", "-e", json.dumps({"nvidia_driver_force": True, **settings}))
    return result, result.stdout + result.stderr


def assert_host_untouched():
    assert not app.file(BLACKLIST).exists
    installed = app.run("dpkg -l 'nvidia-*' 'cuda-*' 2>/dev/null | grep -c '^ii'").stdout
    assert installed.strip() == "0"
    assert not app.file("/etc/apt/sources.list.d/debian-nvidia.sources").exists


def test_a_host_without_a_gpu_is_left_alone_and_told_so():
    result = run_role()
    assert result.returncode == 0, result.stdout[-2000:]
    assert "No NVIDIA GPU on fleet-app1: nothing to do" in " ".join(result.stdout.split())
    assert "changed=0" in result.stdout
    assert_host_untouched()


def test_forced_check_mode_shows_nvidias_repository_and_the_pinned_branch():
    result, output = forced_check(nvidia_driver_source="cuda")
    assert result.returncode == 0, output[-2000:]
    assert "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/" in output
    assert "cuda-keyring_1.1-1_all.deb" in output
    assert "packages: cuda-drivers-580" in output
    assert_host_untouched()


def test_forced_check_mode_on_debians_own_branch_with_a_version_pin():
    result, output = forced_check(
        nvidia_driver_branch=535, nvidia_driver_package_version="535.247.01-1~deb12u1"
    )
    assert result.returncode == 0, output[-2000:]
    assert "packages: nvidia-driver=535.247.01-1~deb12u1 nvidia-smi nvidia-persistenced" in output
    # Held by name (the pin dropped), so that no upgrade replaces them under a running host.
    assert "held against upgrades: nvidia-driver nvidia-smi nvidia-persistenced" in output
    # The mirror is the one the instance's own apt sources use for bookworm (no role names one).
    mirror = app.check_output(
        'awk \'$1 == "deb" && $3 == "bookworm" {print $2; exit}\' /etc/apt/sources.list'
    )
    assert mirror.startswith("http")
    assert f"repository: Debian archive at {mirror.rstrip('/')}" in output
    assert_host_untouched()


def test_a_host_whose_apt_sources_serve_no_release_is_told_to_name_a_mirror():
    result, output = forced_check(
        nvidia_driver_branch=535, ansible_distribution_release="trixie-not-configured"
    )
    assert result.returncode != 0
    assert "set nvidia_driver_debian_mirror" in " ".join(output.split())
    assert_host_untouched()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"nvidia_driver_branch": 580}, "nvidia_driver_branch 580 is not in Debian 12's archive"),
        ({"nvidia_driver_source": "ppa"}, "nvidia_driver_source"),
    ],
)
def test_a_wrong_setting_fails_early_naming_it(settings, named):
    result, output = forced_check(**settings)
    assert result.returncode != 0
    assert named in " ".join(output.split())
    assert_host_untouched()


def test_a_gpu_host_gets_cuda_the_device_nodes_and_a_unit_that_may_open_them():
    """A host with an NVIDIA GPU on its PCI bus (given here, as extra vars outrank the role's
    scan) is served on CUDA, with a root oneshot that makes the device nodes before the service
    and a unit allowed to open them, whether or not the nodes exist yet (check mode)."""
    # ... with 3 GPUs and 16 cores (extra vars outrank the facts too): a worker per 4 cores,
    # rounded up to two per GPU, and their torch threads sharing the cores.
    gpu = {
        "nvidia_driver_detected_gpus": ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0"],
        "bento_service_cpu_cores": 16,
    }
    result = run_playbook(
        "playbooks/inference.yml",
        "--limit",
        "fleet-app1",
        "--tags",
        "bento_service",
        "--check",
        "--diff",
        "-e",
        json.dumps(gpu),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "+device: cuda" in output  # never device: auto, which would fall back to the CPU
    assert "+gpus: 3" in output and "+workers: 6" in output and "+torch_threads: 2" in output
    assert "+DeviceAllow=char-nvidia-uvm rw" in output and "-PrivateDevices=true" in output
    assert "+After=bento-fleet-nvidia-devices.service" in output
    assert "/usr/local/libexec/bento-fleet-nvidia-devices" in output
    assert not app.file("/etc/systemd/system/bento-fleet-nvidia-devices.service").exists
    assert "device: cuda" not in app.file("/opt/bento-fleet/current/config.yaml").content_string
