"""crd_bridge.tenancy: the run worker's rights per namespace, asked once per TTL, never blocking on doubt."""

from bridge_fakes import Clock, FakeKube

from crd_bridge.tenancy import TTL, TenantGate, service_account_groups

WORKER = "system:serviceaccount:dagster:kubetask-run-worker"


def test_a_service_accounts_groups_are_those_the_api_server_gives_its_token():
    assert service_account_groups(WORKER) == (
        "system:serviceaccounts",
        "system:serviceaccounts:dagster",
        "system:authenticated",
    )
    assert service_account_groups("alice") == ("system:authenticated",)


def test_without_a_run_worker_nothing_is_asked():
    kube = FakeKube()
    kube.enabled = set()
    assert TenantGate(kube, None).refusal("team-a", "Task") is None
    assert kube.reviews == []


def test_a_namespace_is_refused_until_it_opts_in_and_answers_are_reused_for_the_ttl():
    kube, clock = FakeKube(), Clock()
    kube.enabled = {"team-a"}
    gate = TenantGate(kube, WORKER, clock=clock)
    assert gate.refusal("team-a", "Task") is None
    message = gate.refusal("team-b", "BatchRun")
    assert message is not None
    assert 'namespace "team-b"' in message and WORKER in message
    assert "kubectl apply -k deploy/tenant -n team-b" in message and "create the BatchRun again" in message
    gate.refusal("team-b", "Task")
    assert [r[-1] for r in kube.reviews] == ["team-a", "team-b"]  # the second answer came from the cache

    kube.enabled.add("team-b")
    clock.t += TTL
    assert gate.refusal("team-b", "Task") is None
    assert len(kube.reviews) == 3


def test_an_unanswerable_review_lets_the_object_through_and_is_asked_again():
    kube = FakeKube()
    kube.enabled = set()
    kube.may_error = RuntimeError("403 subjectaccessreviews is forbidden")
    gate = TenantGate(kube, WORKER)
    assert gate.refusal("team-a", "Task") is None  # RBAC still refuses the run worker itself
    kube.may_error = None
    assert gate.refusal("team-a", "Task") is not None
