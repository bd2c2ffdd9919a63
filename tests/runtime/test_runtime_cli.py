"""`meshext test DIR --module FILE.wasm` runs the project's tests with the harness fixtures."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PASSING = '''
    from meshext.testing import Action

    def test_trace_module_adds_its_header(filter_module):
        with filter_module(config="from-test", root_id="r") as plugin:
            stream = plugin.exchange("GET", "/hello")
            assert stream.request.header("x-wat-trace") == "yes"
            assert plugin.log_messages()[:3] == ["on_context_create 1 0", "on_vm_start 1 0", "on_configure 1 9"]
        assert plugin.log_messages()[-2:] == ["on_done 1", "on_delete 1"]  # drained on exit

    def test_steps(filter_module, proxy_host):
        stream = filter_module(config={"json": True}).http_stream()
        assert stream.send_request_headers({":path": "/"}, end_stream=True) == Action.CONTINUE
        assert stream.request.header("x-wat-trace") == "yes"
        assert proxy_host.log_lines()[-1] == "on_request_headers 2 1 1"
'''

FAILING = '''
    def test_expects_a_header_the_filter_does_not_add(filter_module):
        assert filter_module(config="c").exchange().request.header("x-missing") == "yes"
'''


def run_meshext_test(tmp_path, source, module):
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_filter.py").write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-m", "meshext", "test", str(project), "--module", str(module), "-q"],
                          capture_output=True, text=True, timeout=120)


def test_passing_project(tmp_path, wat_module):
    result = run_meshext_test(tmp_path, PASSING, wat_module("trace"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_failing_project_fails_the_command(tmp_path, wat_module):
    result = run_meshext_test(tmp_path, FAILING, wat_module("trace"))
    assert result.returncode == 1
    assert "1 failed" in result.stdout and "x-missing" in result.stdout
    assert "meshext module log" in result.stdout and "on_request_headers 2 4 1" in result.stdout


def test_help_explains_the_command():
    result = subprocess.run([sys.executable, "-m", "meshext", "test", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--module" in result.stdout and "MESHEXT_TEST_MODULE" in result.stdout


def test_scaffold_from_meshext_init_passes_under_meshext_test(tmp_path):
    """`meshext init` then `meshext test`: builds the Python filter and runs its own test."""
    project = tmp_path / "demo"
    init = subprocess.run([sys.executable, "-m", "meshext", "init", "demo", "-d", str(project)],
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    result = subprocess.run([sys.executable, "-m", "meshext", "test", str(project), "-q"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout and "building" in result.stderr
