"""The RemoteFile address policy: public addresses only, plus what the operator allows."""

import pytest

from kubetask.domain.addresses import AddressPolicy

DEFAULT = AddressPolicy()


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.0.1", "private"), ("fd12::1", "private"),
        ("100.64.0.1", "non-public"), ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("240.0.0.1", "address"),
    ],
)
def test_non_public_addresses_are_refused(address, kind):
    assert kind in DEFAULT.refusal("h.example", address, 80)


@pytest.mark.parametrize("address", ["93.184.216.34", "140.82.112.4", "2606:4700::6810:84e5"])
def test_public_addresses_pass(address):
    assert DEFAULT.refusal("h.example", address, 443) is None


def test_metadata_names_are_refused_by_name():
    assert "cloud metadata" in DEFAULT.name_refusal("metadata.google.internal.")
    assert DEFAULT.name_refusal("example.com") is None


def test_the_operator_allows_networks_and_single_servers_and_denies_cluster_networks():
    policy = AddressPolicy.parse(["10.20.0.0/16", "127.0.0.1:8080", ""], ["203.0.113.0/24", "198.51.100.0/24"])
    assert policy.refusal("git.corp", "10.20.3.4", 443) is None
    assert policy.refusal("localhost", "127.0.0.1", 8080) is None
    assert "loopback" in policy.refusal("localhost", "127.0.0.1", 8081)  # another port of the same address
    assert "in the cluster's networks" in policy.refusal("svc", "198.51.100.7", 80)
