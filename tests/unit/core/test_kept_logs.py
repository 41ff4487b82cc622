"""Cutting a Task attempt's block out of a compute log, and reading status.agentLog."""

from kubetask.domain.kept_logs import END, KeptLogRef, extract, find_block, header, parse_agent_log


def block(ns, name, attempt, pod, body):
    return f"{header(ns, name, attempt, pod)}\n{body}\n{END}\n"


SHARED = (
    "some step printed this\n"
    + block("ns", "br-task-1", 1, "br-task-1-job-1-aaaaa", "one\ntwo")
    + "noise between blocks\n"
    + block("ns", "br-task-10", 1, "br-task-10-job-1-bbbbb", "ten")
    + block("other", "br-task-1", 1, "p", "another namespace")
    + block("ns", "br-task-1", 2, "br-task-1-job-2-ccccc", "retry")
)


def test_a_batchruns_shared_log_yields_exactly_the_block_of_the_task_and_attempt():
    found = extract(SHARED, "ns", "br-task-1", 1)
    assert (found.text, found.pod, found.complete) == ("one\ntwo\n", "br-task-1-job-1-aaaaa", True)
    assert extract(SHARED, "ns", "br-task-10", 1).text == "ten\n"  # not a prefix match on the name
    assert extract(SHARED, "ns", "br-task-1", 2).text == "retry\n"
    assert extract(SHARED, "other", "br-task-1", 1).text == "another namespace\n"
    assert extract(SHARED, "ns", "br-task-1", 3) is None
    assert extract(SHARED, "ns", "br-task-2", 1) is None


def test_the_block_survives_chunks_that_cut_lines_and_headers_anywhere():
    for size in (1, 3, 7, 64):
        chunks = [SHARED[i:i + size] for i in range(0, len(SHARED), size)]
        assert find_block(chunks, "ns", "br-task-1", 1).text == "one\ntwo\n"


def test_the_last_copy_wins_and_a_block_without_its_end_is_marked_incomplete():
    twice = block("ns", "t", 1, "p1", "first") + block("ns", "t", 1, "p2", "second")
    assert extract(twice, "ns", "t", 1).text == "second\n"
    cut = header("ns", "t", 1, "p") + "\nhalf a log\n"
    found = extract(cut, "ns", "t", 1)
    assert (found.text, found.complete) == ("half a log\n", False)
    interrupted = header("ns", "t", 1, "p") + "\npartial\n" + block("ns", "u", 1, "q", "u's")
    assert (extract(interrupted, "ns", "t", 1).text, extract(interrupted, "ns", "u", 1).text) == ("partial\n", "u's\n")


def test_log_lines_that_look_like_frames_of_other_tasks_stay_inside_the_block():
    inner = "===== agent log of Task ns/t, attempt 1 pod x =====\n===== not the end =====\n"  # not the ops' header
    assert extract(block("ns", "t", 1, "p", inner.rstrip("\n")), "ns", "t", 1).text == inner


def test_an_empty_block_is_found_empty():
    assert extract(f"{header('ns', 't', 1, 'p')}\n{END}\n", "ns", "t", 1).text == ""


def test_status_agent_log_is_parsed_as_the_ops_write_it():
    ref = parse_agent_log("Dagster run 0f6a-7c1e, step run_batch_task[task_3]: its stdout (attempt 2)")
    assert ref == KeptLogRef("0f6a-7c1e", "run_batch_task[task_3]", 2)
    assert parse_agent_log(None) is None and parse_agent_log("") is None
    assert parse_agent_log("somewhere else") is None
