"""Shared test setup: one intra-op thread per test process (two xdist workers share two cores), and the summary of
fault-injection scenarios and trials that tests/test_reliability.py records."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def record_fault(request):
    """``record_fault(scenario, trials)``: counted in the run's closing summary."""

    def record(scenario: str, trials: int) -> None:
        request.node.user_properties.append(("fault", scenario, trials))

    return record


def pytest_terminal_summary(terminalreporter):
    faults = {}
    for report in terminalreporter.stats.get("passed", []):
        for prop in report.user_properties:
            if prop[0] == "fault":
                faults[prop[1]] = faults.get(prop[1], 0) + prop[2]
    if faults:
        terminalreporter.write_line(f"fault injection: {len(faults)} scenarios, {sum(faults.values())} trials passed "
                                    f"({', '.join(f'{k}: {v}' for k, v in sorted(faults.items()))})")
