"""The README's API tour runs as written."""

import re

import pytest

from conftest import REPO


@pytest.mark.slow
def test_readme_python_blocks_run():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    text = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    test_cmd = [c for c in commands if "pytest" in c]
    assert len(test_cmd) == 1 and test_cmd[0].strip() in ci


def test_readme_cli_lines_parse_with_valid_presets():
    # Every `mamlx ...` command in the README's bash blocks is one the parser accepts
    # (a renamed flag or preset there would otherwise go unnoticed), with valid configs.
    import shlex

    from mamlx.cli import _config_from_args, build_parser

    text = (REPO / "README.md").read_text()
    bash = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    commands = []
    for line in bash.replace("\\\n", " ").splitlines():
        for part in line.split("#", 1)[0].split("&&"):
            words = shlex.split(part.replace("{maml,fomaml,pretrain}", "maml"))
            if words[:1] == ["mamlx"]:
                commands.append(words[1:])
    expected = {"train", "eval", "list", "show", "predict", "embed"}
    assert {c[0] for c in commands} == expected and len(commands) >= 8
    parser = build_parser()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"README: `mamlx {' '.join(argv)}` does not parse") from e
        if argv[0] == "train" and args.task is not None:
            _config_from_args(args.task, args)  # presets and values are valid
