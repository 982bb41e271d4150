"""The Slicer extension's build files: CMake installs every file the BINDS modules need, and the
extension metadata (CMakeLists.txt, BINDS.s4ext) is complete and consistent.

Slicer is not needed. A small evaluator reads the CMakeLists.txt files (``set``,
``list(APPEND|FILTER)``, ``file(GLOB|GLOB_RECURSE)``, ``project``, ``add_subdirectory``,
``slicerMacroBuildScriptedModule``, ``ctkMacroCompilePythonScript``) and computes which source
file lands where in the extension's ``qt-scripted-modules/`` folder. It does not evaluate
``if``/``foreach``: keep file lists in straight-line ``set()``/``file()`` calls. Where ``cmake`` is
installed, one more test configures, builds and installs the extension against a stub of Slicer's
CMake macros and compares the installed tree with the evaluator's.

The macros' semantics come from Slicer/Slicer ``CMake/SlicerMacroBuildScriptedModule.cmake`` and
commontk/CTK ``CMake/ctkMacroCompilePythonScript.cmake``: a relative path is copied from
``SOURCE_DIR/<path>`` (default: the current source folder) to ``DESTINATION_DIR/<path>``, and
``WITH_SUBDIR`` adds the current folder's name to the destination. The .s4ext checks are those of
Slicer/ExtensionsIndex ``scripts/check_description_files.py``.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import posixpath
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import typing
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Stand-ins for the values Slicer's CMake configuration provides.
BINARY_DIR = "/BINARY_DIR"
QTSCRIPTEDMODULES_LIB_DIR = "lib/Slicer-5.8/qt-scripted-modules"

PROJECT_HOME = "https://github.com/binds-project/SlicerBINDS"
RAW_FILES_URL = "https://raw.githubusercontent.com/binds-project/SlicerBINDS/main/"

# Imported at file scope by a Slicer module, these slow down Slicer's start for every user, and
# fail before the PyTorch extension has installed torch (Extensions Index review rule).
HEAVY_PACKAGES = frozenset(
    {"torch", "monai", "pydicom", "SimpleITK", "BINDSLib", "numpy", "scipy", "pandas", "matplotlib"}
)

# ---------------------------------------------------------------------------------------------
# Reading CMake
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Argument:
    value: str
    quoted: bool


@dataclass(frozen=True)
class Command:
    name: str  # lower case: CMake command names are case-insensitive
    arguments: tuple[Argument, ...]
    line: int


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACKET_OPEN = re.compile(r"\[(=*)\[")


def parse_cmake(text: str) -> list[Command]:
    """Split CMake code into command invocations (comments dropped, arguments unexpanded)."""
    commands: list[Command] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            i = _skip_comment(text, i)
        elif c.isspace():
            i += 1
        else:
            match = _IDENTIFIER.match(text, i)
            if not match:
                raise ValueError(f"unexpected {c!r} at line {text.count(chr(10), 0, i) + 1}")
            j = match.end()
            while j < n and text[j] in " \t":
                j += 1
            if j >= n or text[j] != "(":
                raise ValueError(f"{match.group()} is not followed by '(' at line {text.count(chr(10), 0, i) + 1}")
            arguments, i = _parse_arguments(text, j + 1)
            commands.append(Command(match.group().lower(), tuple(arguments), text.count("\n", 0, match.start()) + 1))
    return commands


def _skip_comment(text: str, i: int) -> int:
    bracket = _BRACKET_OPEN.match(text, i + 1)
    if bracket:
        end = text.find("]" + bracket.group(1) + "]", bracket.end())
        return len(text) if end < 0 else end + len(bracket.group(1)) + 2
    end = text.find("\n", i)
    return len(text) if end < 0 else end + 1


def _parse_arguments(text: str, i: int) -> tuple[list[Argument], int]:
    arguments: list[Argument] = []
    depth = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            i = _skip_comment(text, i)
        elif c == "(":
            depth += 1
            arguments.append(Argument("(", False))
            i += 1
        elif c == ")":
            if depth == 0:
                return arguments, i + 1
            depth -= 1
            arguments.append(Argument(")", False))
            i += 1
        elif c == '"':
            value, i = _parse_quoted(text, i + 1)
            arguments.append(Argument(value, True))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in '()#"':
                i += 2 if text[i] == "\\" else 1
            arguments.append(Argument(text[start:i], False))
    raise ValueError("unterminated command: missing ')'")


def _parse_quoted(text: str, i: int) -> tuple[str, int]:
    chars: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(chars), i + 1
        if c == "\\" and i + 1 < n:
            following = text[i + 1]
            if following == "\n":  # line continuation
                pass
            elif following in '"\\':
                chars.append(following)
            else:
                chars.append(c + following)
            i += 2
        else:
            chars.append(c)
            i += 1
    raise ValueError('unterminated quoted argument: missing \'"\'')


def parse_arguments(
    values: list[str], options: set[str], one_value: set[str], multi_value: set[str]
) -> dict[str, typing.Any]:
    """Python version of cmake_parse_arguments()."""
    parsed: dict[str, typing.Any] = {name: False for name in options}
    keyword = None
    for value in values:
        if value in options:
            parsed[value] = True
            keyword = None
        elif value in one_value or value in multi_value:
            keyword = value
            parsed.setdefault(value, [])
        elif keyword is None:
            parsed.setdefault("UNPARSED_ARGUMENTS", []).append(value)
        else:
            parsed[keyword].append(value)
    for name in one_value:
        if name in parsed:
            parsed[name] = ";".join(parsed[name])
    return parsed


# ---------------------------------------------------------------------------------------------
# Evaluating CMake
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InstalledFile:
    source: Path  # absolute
    destination: str  # relative to qt-scripted-modules/, POSIX separators
    cmake_file: Path
    line: int


@dataclass
class Extension:
    root: Path
    top_level_variables: dict[str, str] = field(default_factory=dict)
    top_level_commands: list[Command] = field(default_factory=list)
    installed: list[InstalledFile] = field(default_factory=list)
    cmake_files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def destinations(self) -> dict[str, InstalledFile]:
        return {item.destination: item for item in self.installed}

    def installed_sources(self) -> set[Path]:
        return {item.source for item in self.installed}


_VARIABLE_REFERENCE = re.compile(r"\$\{([^${}]*)\}")


class _Evaluator:
    def __init__(self, root: Path) -> None:
        self.extension = Extension(root=root)

    def run(self) -> Extension:
        root = self.extension.root
        scope = {
            "CMAKE_SOURCE_DIR": root.as_posix(),
            "PROJECT_SOURCE_DIR": root.as_posix(),
            "CMAKE_BINARY_DIR": BINARY_DIR,
            "Slicer_QTSCRIPTEDMODULES_LIB_DIR": QTSCRIPTEDMODULES_LIB_DIR,
            "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR": QTSCRIPTEDMODULES_LIB_DIR,
            "Slicer_USE_FILE": "/Slicer/UseSlicer.cmake",
            "Slicer_EXTENSION_GENERATE_CONFIG": "/Slicer/SlicerExtensionGenerateConfig.cmake",
            "Slicer_EXTENSION_CPACK": "/Slicer/SlicerExtensionCPack.cmake",
        }
        commands = self.evaluate_file(root / "CMakeLists.txt", scope)
        self.extension.top_level_variables = scope
        self.extension.top_level_commands = commands
        return self.extension

    def evaluate_file(self, cmake_file: Path, scope: dict[str, str]) -> list[Command]:
        self.extension.cmake_files.append(cmake_file)
        directory = cmake_file.parent.as_posix()
        scope.update(CMAKE_CURRENT_SOURCE_DIR=directory, CMAKE_CURRENT_LIST_DIR=directory)
        commands = parse_cmake(cmake_file.read_text(encoding="utf-8"))
        for command in commands:
            handler = getattr(self, "cmd_" + command.name, None)
            if handler is not None:
                handler(command, scope, cmake_file)
        return commands

    # -- expansion -----------------------------------------------------------------------------

    def expand(self, value: str, scope: dict[str, str]) -> str:
        while True:
            expanded = _VARIABLE_REFERENCE.sub(lambda m: scope.get(m.group(1), ""), value)
            if expanded == value:
                return expanded
            value = expanded

    def expand_arguments(self, command: Command, scope: dict[str, str]) -> list[str]:
        """Expanded arguments; an unquoted argument is split into its non-empty list items."""
        values: list[str] = []
        for argument in command.arguments:
            value = self.expand(argument.value, scope)
            if argument.quoted:
                values.append(value)
            else:
                values.extend(item for item in value.split(";") if item)
        return values

    def macro_arguments(self, command: Command, scope: dict[str, str]) -> list[str]:
        """Arguments as a macro's cmake_parse_arguments(... ${ARGN}) sees them: quoted lists split too."""
        return [item for value in self.expand_arguments(command, scope) for item in value.split(";") if item]

    def unresolved(self, command: Command, scope: dict[str, str]) -> list[str]:
        return [
            name
            for argument in command.arguments
            for name in _VARIABLE_REFERENCE.findall(argument.value)
            if name not in scope and "$" not in name
        ]

    # -- commands ------------------------------------------------------------------------------

    def cmd_project(self, command: Command, scope: dict[str, str], cmake_file: Path) -> None:
        name = self.expand_arguments(command, scope)[0]
        scope.update(PROJECT_NAME=name, PROJECT_SOURCE_DIR=scope["CMAKE_CURRENT_SOURCE_DIR"])

    def cmd_set(self, command: Command, scope: dict[str, str], cmake_file: Path) -> None:
        name, *values = self.expand_arguments(command, scope)
        if "PARENT_SCOPE" in values:
            return  # no parent scope is modelled; only the top level is read back
        if "CACHE" in values:
            values = values[: values.index("CACHE")]
        if values:
            scope[name] = ";".join(values)
        else:
            scope.pop(name, None)

    def cmd_list(self, command: Command, scope: dict[str, str], cmake_file: Path) -> None:
        operation, name, *values = self.expand_arguments(command, scope)
        items = [item for item in scope.get(name, "").split(";") if item]
        if operation == "APPEND":
            items += values
        elif operation == "FILTER":
            mode, _regex_keyword, regex = values
            keep = mode == "INCLUDE"
            items = [item for item in items if bool(re.search(regex, item)) == keep]
        else:
            self.extension.problems.append(f"{cmake_file}:{command.line}: list({operation}) is not modelled")
        scope[name] = ";".join(items)

    def cmd_file(self, command: Command, scope: dict[str, str], cmake_file: Path) -> None:
        operation, *rest = self.expand_arguments(command, scope)
        if operation not in ("GLOB", "GLOB_RECURSE"):
            return
        name, *rest = rest
        relative_to = None
        patterns = []
        i = 0
        while i < len(rest):
            if rest[i] == "RELATIVE":
                relative_to, i = Path(rest[i + 1]), i + 2
            elif rest[i] == "LIST_DIRECTORIES":
                i += 2
            elif rest[i] in ("CONFIGURE_DEPENDS", "FOLLOW_SYMLINKS"):
                i += 1
            else:
                patterns.append(rest[i])
                i += 1
        found: set[Path] = set()
        for pattern in patterns:
            if not posixpath.isabs(pattern):
                pattern = posixpath.join(scope["CMAKE_CURRENT_SOURCE_DIR"], pattern)
            found |= self.glob(pattern, recursive=operation == "GLOB_RECURSE", where=f"{cmake_file}:{command.line}")
        if relative_to is not None:
            values = sorted(path.relative_to(relative_to).as_posix() for path in found)
        else:
            values = sorted(path.as_posix() for path in found)
        scope[name] = ";".join(values)

    def glob(self, pattern: str, recursive: bool, where: str) -> set[Path]:
        directory, name_pattern = posixpath.split(pattern)
        if any(ch in directory for ch in "*?["):
            self.extension.problems.append(f"{where}: wildcards are modelled in the file name only: {pattern}")
            return set()
        base = Path(directory)
        if not base.is_dir():
            return set()
        candidates = base.rglob("*") if recursive else base.glob("*")
        return {path for path in candidates if path.is_file() and fnmatch.fnmatchcase(path.name, name_pattern)}

    def cmd_add_subdirectory(self, command: Command, scope: dict[str, str], cmake_file: Path) -> None:
        subdirectory = Path(scope["CMAKE_CURRENT_SOURCE_DIR"]) / self.expand_arguments(command, scope)[0]
        child = subdirectory / "CMakeLists.txt"
        if not child.is_file():
            self.extension.problems.append(
                f"{cmake_file}:{command.line}: add_subdirectory({subdirectory.name}) has no {child}"
            )
            return
        self.evaluate_file(child, dict(scope))

    def cmd_slicermacrobuildscriptedmodule(self, command: Command, scope: dict[str, str], cmake_file: Path) -> None:
        arguments = parse_arguments(
            self.macro_arguments(command, scope),
            options={"WITH_GENERIC_TESTS", "WITH_SUBDIR", "VERBOSE"},
            one_value={"NAME"},
            multi_value={"SCRIPTS", "RESOURCES"},
        )
        where = f"{cmake_file}:{command.line}"
        if arguments.get("UNPARSED_ARGUMENTS"):
            self.extension.problems.append(f"{where}: unknown arguments {arguments['UNPARSED_ARGUMENTS']}")
        source_dir = Path(scope["CMAKE_CURRENT_SOURCE_DIR"])
        prefix = source_dir.name if arguments["WITH_SUBDIR"] else ""
        self.add_files(command, scope, cmake_file, source_dir, prefix, arguments)

    def cmd_ctkmacrocompilepythonscript(self, command: Command, scope: dict[str, str], cmake_file: Path) -> None:
        arguments = parse_arguments(
            self.macro_arguments(command, scope),
            options={"NO_INSTALL_SUBDIR", "GLOBAL_TARGET"},
            one_value={"TARGET_NAME", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR"},
            multi_value={"SCRIPTS", "RESOURCES"},
        )
        where = f"{cmake_file}:{command.line}"
        expected_destination = f"{BINARY_DIR}/{QTSCRIPTEDMODULES_LIB_DIR}"
        if arguments.get("DESTINATION_DIR") != expected_destination:
            self.extension.problems.append(
                f"{where}: DESTINATION_DIR must be ${{CMAKE_BINARY_DIR}}/${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}, "
                "so that the files land next to the modules"
            )
        if arguments.get("INSTALL_DIR") != QTSCRIPTEDMODULES_LIB_DIR or not arguments["NO_INSTALL_SUBDIR"]:
            self.extension.problems.append(
                f"{where}: install with INSTALL_DIR ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}} and "
                "NO_INSTALL_SUBDIR, as slicerMacroBuildScriptedModule() does"
            )
        source_dir = Path(arguments.get("SOURCE_DIR") or scope["CMAKE_CURRENT_SOURCE_DIR"])
        self.add_files(command, scope, cmake_file, source_dir, "", arguments)

    def add_files(
        self,
        command: Command,
        scope: dict[str, str],
        cmake_file: Path,
        source_dir: Path,
        prefix: str,
        arguments: dict[str, typing.Any],
    ) -> None:
        where = f"{cmake_file}:{command.line}"
        for name in self.unresolved(command, scope):
            self.extension.problems.append(f"{where}: ${{{name}}} is not set (if/foreach are not evaluated)")
        for kind in ("SCRIPTS", "RESOURCES"):
            for relative in arguments.get(kind, []):
                if kind == "SCRIPTS" and "py" not in _cmake_extension(relative):
                    relative += ".py"  # as the macros do
                if posixpath.isabs(relative):
                    self.extension.problems.append(f"{where}: {kind} lists absolute path {relative}")
                    continue
                destination = posixpath.normpath(posixpath.join(prefix, relative) if prefix else relative)
                if destination == ".." or destination.startswith("../"):
                    self.extension.problems.append(
                        f"{where}: {kind} entry {relative!r} would be copied outside qt-scripted-modules/ "
                        f"(to {destination}); list it relative to a SOURCE_DIR that contains it"
                    )
                    continue
                source = Path(os.path.normpath(source_dir / relative))
                self.extension.installed.append(InstalledFile(source, destination, cmake_file, command.line))


def _cmake_extension(path: str) -> str:
    """get_filename_component(EXT): the file name from its first dot on."""
    name = posixpath.basename(path)
    return name[name.index(".") :] if "." in name else ""


def evaluate_extension(root: Path) -> Extension:
    return _Evaluator(root).run()


@pytest.fixture(scope="module")
def extension() -> Extension:
    return evaluate_extension(REPO)


# ---------------------------------------------------------------------------------------------
# Files that must ship
# ---------------------------------------------------------------------------------------------


def _is_cache(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix == ".pyc" or path.name == ".DS_Store"


def files_that_must_ship(root: Path) -> list[Path]:
    """Module scripts, BINDSLib (what its wheel ships: *.py and resources/), and all of Resources/."""
    files: list[Path] = []
    files += [p for p in (root / "BINDS").rglob("*.py") if not _is_cache(p)]
    files += [p for p in (root / "BINDSLib").rglob("*.py") if not _is_cache(p)]
    files += [p for p in (root / "BINDSLib" / "resources").rglob("*") if p.is_file() and not _is_cache(p)]
    files += [p for p in (root / "Resources").rglob("*") if p.is_file() and not _is_cache(p)]
    return sorted(files)


def test_cmake_files_are_evaluated_without_problems(extension: Extension):
    assert extension.problems == []
    assert REPO / "BINDS" / "CMakeLists.txt" in extension.cmake_files


def test_listed_files_exist(extension: Extension):
    missing = [
        f"{item.cmake_file.relative_to(REPO)}:{item.line}: {item.source.relative_to(REPO)}"
        for item in extension.installed
        if not item.source.is_file()
    ]
    assert missing == [], "CMake lists files that do not exist"


def test_every_module_file_is_installed(extension: Extension):
    installed = extension.installed_sources()
    not_installed = [p.relative_to(REPO).as_posix() for p in files_that_must_ship(REPO) if p not in installed]
    assert not_installed == [], (
        "add these files to MODULE_PYTHON_SCRIPTS / MODULE_PYTHON_RESOURCES in BINDS/CMakeLists.txt "
        "(BINDSLib/*.py, BINDSLib/resources/ and Resources/Models/ are globbed; check the glob patterns)"
    )


def test_no_two_files_install_to_the_same_place(extension: Extension):
    seen: dict[str, Path] = {}
    clashes = []
    for item in extension.installed:
        if item.destination in seen and seen[item.destination] != item.source:
            clashes.append(f"{item.destination}: {seen[item.destination]} and {item.source}")
        seen.setdefault(item.destination, item.source)
    assert clashes == []


def test_binds_folder_holds_only_module_scripts():
    """Slicer loads each .py file in BINDS/ as a module, and installs nothing else from there."""
    strays = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "BINDS").rglob("*")
        if p.is_file() and not _is_cache(p) and p.suffix != ".py" and p.name != "CMakeLists.txt"
    ]
    assert strays == [], "put icons, .ui files and other resources in Resources/ at the repository root"


#: The scripted modules: Slicer loads each top-level .py file of BINDS/ as a module.
MODULES = ("BINDS", "BINDSRisk")
#: The package the modules share (in BINDS/, installed next to the modules).
SHARED_PACKAGE = "BINDSSlicerLib"


def test_top_level_files_of_the_binds_folder_are_the_modules():
    """Any other top-level .py file would be loaded by Slicer as a (broken) module: shared code
    belongs in BINDS/BINDSSlicerLib/."""
    assert sorted(p.stem for p in (REPO / "BINDS").glob("*.py")) == sorted(MODULES)
    packages = sorted(p.parent.name for p in (REPO / "BINDS").glob("*/__init__.py"))
    assert packages == [SHARED_PACKAGE]
    assert not [p for p in (REPO / "BINDS" / SHARED_PACKAGE).rglob("*") if p.is_dir() and not _is_cache(p)], \
        "keep BINDSSlicerLib flat (its files are listed one by one in BINDS/CMakeLists.txt)"


def test_modules_bindslib_and_resources_install_side_by_side(extension: Extension):
    destinations = extension.destinations()
    expected = {
        "BINDS.py": REPO / "BINDS" / "BINDS.py",
        "BINDSRisk.py": REPO / "BINDS" / "BINDSRisk.py",
        f"{SHARED_PACKAGE}/__init__.py": REPO / "BINDS" / SHARED_PACKAGE / "__init__.py",
        "BINDSLib/__init__.py": REPO / "BINDSLib" / "__init__.py",
        "Resources/Icons/BINDS.png": REPO / "Resources" / "Icons" / "BINDS.png",
        "Resources/UI/BINDS.ui": REPO / "Resources" / "UI" / "BINDS.ui",
        "Resources/UI/BINDSRisk.ui": REPO / "Resources" / "UI" / "BINDSRisk.ui",
        "Resources/Terminology/BINDS.term.json": REPO / "Resources" / "Terminology" / "BINDS.term.json",
    }
    assert {d: destinations[d].source for d in expected if d in destinations} == expected
    subpackages = [p for p in (REPO / "BINDSLib").rglob("__init__.py") if not _is_cache(p)]
    for init in subpackages:
        assert init.relative_to(REPO).as_posix() in destinations


def _copy_repository_tree(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    destination.mkdir()
    shutil.copy2(REPO / "CMakeLists.txt", destination)
    shutil.copy2(REPO / "LICENSE.txt", destination)
    for folder in ("BINDS", "BINDSLib", "Resources"):
        shutil.copytree(REPO / folder, destination / folder, ignore=ignore)
    return destination


FILES_ADDED_LATER = (
    "BINDSLib/zz_added_module.py",
    "BINDSLib/zz_added_package/__init__.py",
    "BINDSLib/zz_added_package/deep/er.py",
    "BINDSLib/resources/zz_added/terms.json",
    "Resources/Models/zz-added-bundle/configs/inference.json",
    "Resources/Models/zz-added-bundle/models/model.pt",
)


@pytest.fixture()
def tree_with_added_files(tmp_path: Path) -> Path:
    root = _copy_repository_tree(tmp_path / "SlicerBINDS")
    for relative in FILES_ADDED_LATER:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# added later\n", encoding="utf-8")
    return root


def test_files_added_later_to_bindslib_or_models_are_installed_without_cmake_edits(tree_with_added_files: Path):
    extension = evaluate_extension(tree_with_added_files)
    assert extension.problems == []
    destinations = extension.destinations()
    for relative in FILES_ADDED_LATER:
        assert relative in destinations
        assert destinations[relative].source == tree_with_added_files / relative


def test_evaluator_flags_paths_that_leave_qt_scripted_modules(tmp_path: Path):
    (tmp_path / "CMakeLists.txt").write_text("project(X)\nadd_subdirectory(M)\n")
    (tmp_path / "M").mkdir()
    (tmp_path / "M" / "CMakeLists.txt").write_text(
        'slicerMacroBuildScriptedModule(NAME M SCRIPTS M.py RESOURCES "../Resources/UI/M.ui")\n'
    )
    problems = evaluate_extension(tmp_path).problems
    assert len(problems) == 1 and "outside qt-scripted-modules" in problems[0]


def test_evaluator_flags_a_subdirectory_without_cmakelists(tmp_path: Path):
    (tmp_path / "CMakeLists.txt").write_text("project(X)\nadd_subdirectory(Missing) # comment\n")
    problems = evaluate_extension(tmp_path).problems
    assert len(problems) == 1 and "has no" in problems[0]


def test_parser_handles_comments_quotes_and_nesting():
    commands = parse_cmake(
        textwrap.dedent(
            """\
            #[[ bracket
            comment ]]
            set(A "x # not a comment" b) # comment
            if(NOT (A AND B))
              set(B "say \\"hi\\"" ${A})
            endif()
            """
        )
    )
    assert [c.name for c in commands] == ["set", "if", "set", "endif"]
    assert commands[0].arguments == (Argument("A", False), Argument("x # not a comment", True), Argument("b", False))
    assert commands[2].arguments[1] == Argument('say "hi"', True)


# ---------------------------------------------------------------------------------------------
# Extension metadata
# ---------------------------------------------------------------------------------------------

REQUIRED_EXTENSION_VARIABLES = (
    "EXTENSION_HOMEPAGE",
    "EXTENSION_CATEGORY",
    "EXTENSION_CONTRIBUTORS",
    "EXTENSION_DESCRIPTION",
    "EXTENSION_ICONURL",
    "EXTENSION_SCREENSHOTURLS",
    "EXTENSION_DEPENDS",
)


def _list_items(value: str) -> list[str]:
    """A CMake list or a space-separated string, as EXTENSION_DEPENDS may be either."""
    return [item for item in re.split(r"[;\s]+", value) if item]


def test_extension_variables_are_set(extension: Extension):
    variables = extension.top_level_variables
    empty = [name for name in REQUIRED_EXTENSION_VARIABLES if not variables.get(name, "").strip()]
    assert empty == []
    assert variables["PROJECT_NAME"] == "BINDS"
    assert "PyTorch" in _list_items(variables["EXTENSION_DEPENDS"])
    assert variables["EXTENSION_HOMEPAGE"] == PROJECT_HOME
    for name in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in _list_items(variables[name]):
            assert url.startswith("https://"), f"{name}: {url}"
    assert Path(variables["EXTENSION_LICENSE_FILE"]) == REPO / "LICENSE.txt"


def test_top_level_cmakelists_follows_the_extension_template(extension: Extension):
    """Order of Slicer/Slicer Utilities/Templates/Extensions/Default/CMakeLists.txt."""
    calls = [(c.name, c.arguments[0].value if c.arguments else "") for c in extension.top_level_commands]
    expected_order = [
        ("cmake_minimum_required", "VERSION"),
        ("project", "BINDS"),
        ("find_package", "Slicer"),
        ("include", "${Slicer_USE_FILE}"),
        ("add_subdirectory", "BINDS"),
        ("include", "${Slicer_EXTENSION_GENERATE_CONFIG}"),
        ("include", "${Slicer_EXTENSION_CPACK}"),
    ]
    positions = [calls.index(call) for call in expected_order]
    assert positions == sorted(positions)
    assert calls.index(("set", "EXTENSION_LICENSE_FILE")) < calls.index(("include", "${Slicer_USE_FILE}"))


def _repository_file_for(url: str) -> Path:
    assert url.startswith(RAW_FILES_URL), f"{url} is not a file of {PROJECT_HOME} (main branch)"
    return REPO / url[len(RAW_FILES_URL) :]


def test_extension_icon_is_a_small_128_pixel_png_in_the_repository(extension: Extension):
    icon = _repository_file_for(extension.top_level_variables["EXTENSION_ICONURL"])
    data = icon.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)
    assert len(data) < 20_000


def test_screenshots_are_in_the_repository(extension: Extension):
    missing = [
        _repository_file_for(url).relative_to(REPO).as_posix()
        for url in _list_items(extension.top_level_variables["EXTENSION_SCREENSHOTURLS"])
        if not _repository_file_for(url).is_file()
    ]
    if missing:
        pytest.skip(f"add the screenshots {missing} before submitting BINDS to the Extensions Index")


def parse_s4ext(path: Path) -> dict[str, str | None]:
    """The parser of Slicer/ExtensionsIndex scripts/check_description_files.py."""
    metadata: dict[str, str | None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = [part.strip() for part in line.split(" ", 1)]
        metadata[fields[0]] = fields[1] if len(fields) == 2 and fields[1] else None
    return metadata


S4EXT_KEYS = (
    "scm",
    "scmurl",
    "scmrevision",
    "depends",
    "build_subdirectory",
    "homepage",
    "contributors",
    "category",
    "iconurl",
    "status",
    "description",
    "screenshoturls",
    "enabled",
)


@pytest.fixture(scope="module")
def s4ext() -> dict[str, str | None]:
    return parse_s4ext(REPO / "BINDS.s4ext")


def test_s4ext_has_the_required_keys(s4ext):
    assert [key for key in S4EXT_KEYS if not s4ext.get(key)] == []
    assert s4ext["scm"] == "git"
    assert s4ext["scmurl"] == PROJECT_HOME
    assert s4ext["scmrevision"] == "main"
    assert s4ext["build_subdirectory"] == "."
    assert s4ext["enabled"] == "1"
    assert "PyTorch" in s4ext["depends"].split(" ")


def test_s4ext_passes_the_extensions_index_checks(s4ext):
    """Checks of Slicer/ExtensionsIndex scripts/check_description_files.py."""
    assert s4ext["homepage"].startswith("https://")
    assert s4ext["iconurl"].startswith("https://")
    assert all(url.startswith("http") for url in s4ext["screenshoturls"].split(" "))
    assert s4ext["scmurl"].split("://")[0] in ("git", "https", "svn")
    assert s4ext["scm"] != "local"
    repository_name = s4ext["scmurl"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert "slicer" in repository_name.lower()


def test_s4ext_matches_cmakelists(s4ext, extension: Extension):
    variables = extension.top_level_variables
    assert s4ext["homepage"] == variables["EXTENSION_HOMEPAGE"]
    assert s4ext["category"] == variables["EXTENSION_CATEGORY"]
    assert s4ext["contributors"] == variables["EXTENSION_CONTRIBUTORS"]
    assert s4ext["description"] == variables["EXTENSION_DESCRIPTION"]
    assert s4ext["iconurl"] == variables["EXTENSION_ICONURL"]
    assert s4ext["screenshoturls"].split(" ") == _list_items(variables["EXTENSION_SCREENSHOTURLS"])
    assert s4ext["status"] == variables["EXTENSION_STATUS"]
    assert s4ext["depends"].split(" ") == _list_items(variables["EXTENSION_DEPENDS"])


# ---------------------------------------------------------------------------------------------
# Module files
# ---------------------------------------------------------------------------------------------


def _module_files() -> list[Path]:
    return sorted(p for p in (REPO / "BINDS").rglob("*.py") if not _is_cache(p))


def heavy_imports_at_file_scope(source: str) -> list[tuple[int, str]]:
    """(line, package) of heavy imports that run when the file is imported.

    Function bodies run later and are skipped; class bodies, ``if`` and ``try`` blocks run at
    import time and are searched.
    """
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name.split(".")[0]) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.lineno, child.module.split(".")[0]))
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, (ast.Name, ast.Attribute))
                and getattr(child.func, "id", getattr(child.func, "attr", "")) in ("__import__", "import_module")
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                found.append((child.lineno, child.args[0].value.split(".")[0]))
            visit(child)

    visit(ast.parse(source))
    return [(line, package) for line, package in found if package in HEAVY_PACKAGES]


@pytest.mark.parametrize("module_file", _module_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_module_imports_no_heavy_package_at_file_scope(module_file: Path):
    assert heavy_imports_at_file_scope(module_file.read_text(encoding="utf-8")) == []


def test_heavy_import_detection():
    source = textwrap.dedent(
        """\
        import os
        import numpy as np
        from torch.nn import functional
        try:
            import SimpleITK
        except ImportError:
            pass
        class Widget:
            import pydicom
            def run(self):
                import monai
                from BINDSLib import study
        def later():
            import scipy
        importlib.import_module("pandas")
        """
    )
    assert heavy_imports_at_file_scope(source) == [
        (2, "numpy"),
        (3, "torch"),
        (5, "SimpleITK"),
        (9, "pydicom"),
        (15, "pandas"),
    ]


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _base_names(node: ast.ClassDef) -> set[str]:
    return {getattr(base, "id", getattr(base, "attr", "")) for base in node.bases}


@pytest.mark.parametrize("module", MODULES)
def test_modules_follow_the_scripted_module_template(module: str):
    tree = ast.parse((REPO / "BINDS" / f"{module}.py").read_text(encoding="utf-8"))
    classes = _classes(tree)
    assert "ScriptedLoadableModule" in _base_names(classes[module])
    assert "ScriptedLoadableModuleWidget" in _base_names(classes[f"{module}Widget"])
    assert "ScriptedLoadableModuleLogic" in _base_names(classes[f"{module}Logic"])
    assert "ScriptedLoadableModuleTest" in _base_names(classes[f"{module}Test"])
    wrapped = [
        name
        for name, node in classes.items()
        if any(getattr(d, "id", getattr(d, "attr", "")) == "parameterNodeWrapper" for d in node.decorator_list)
    ]
    assert wrapped == [f"{module}ParameterNode"]


def _module_assignments(module: str) -> dict:
    tree = ast.parse((REPO / "BINDS" / f"{module}.py").read_text(encoding="utf-8"))
    init = next(n for n in _classes(tree)[module].body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {ast.unparse(node.targets[0]): node.value for node in ast.walk(init) if isinstance(node, ast.Assign)}


@pytest.mark.parametrize("module, title", [("BINDS", "BINDS"), ("BINDSRisk", "BINDS Risk")])
def test_module_metadata(module: str, title: str):
    assignments = _module_assignments(module)
    assert ast.literal_eval(assignments["self.parent.categories"]) == ["BINDS"]
    help_text = ast.literal_eval(assignments["self.parent.helpText"].args[0])
    assert "research use" in help_text.lower() and "not for clinical use" in help_text.lower()
    acknowledgement = ast.literal_eval(assignments["self.parent.acknowledgementText"].args[0])
    assert "Nature Biomedical Engineering" in acknowledgement and "2026" in acknowledgement
    assert ast.literal_eval(assignments["self.parent.title"].args[0]) == title


def _string_arguments_of(tree: ast.AST, function_name: str) -> list[str]:
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", "")) == function_name
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]


@pytest.mark.parametrize("module_file", _module_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_resources_named_by_a_module_exist_and_are_installed(module_file: Path, extension: Extension):
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    destinations = extension.destinations()
    for relative in _string_arguments_of(tree, "resourcePath"):
        assert (REPO / "Resources" / relative).is_file(), f"Resources/{relative}"
        assert f"Resources/{relative}" in destinations


def _parameter_names(module: str) -> set[str]:
    tree = ast.parse((REPO / "BINDS" / f"{module}.py").read_text(encoding="utf-8"))
    node = _classes(tree)[f"{module}ParameterNode"]
    return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}


@pytest.mark.parametrize("module", MODULES)
def test_widgets_used_by_a_module_are_in_its_ui_file(module: str):
    tree = ast.parse((REPO / "BINDS" / f"{module}.py").read_text(encoding="utf-8"))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    ui = ElementTree.parse(REPO / "Resources" / "UI" / f"{module}.ui").getroot()
    names = {widget.get("name") for widget in ui.iter("widget")}
    assert ui.find("widget").get("class") == "qMRMLWidget"  # uiWidget.setMRMLScene() needs it
    assert used - names == set()
    disclaimer = ui.find(".//widget[@name='disclaimerLabel']/property[@name='text']/string").text
    assert "Research use only; not for clinical use." in disclaimer
    # widgets bound by connectGui() name a parameter of the module's parameter node
    bound = {
        prop.find("string").text
        for widget in ui.iter("widget")
        for prop in widget.findall("property")
        if prop.get("name") == "SlicerParameterName"
    }
    assert bound <= _parameter_names(module)


def test_widgets_used_by_shared_qt_code_exist_in_both_ui_files():
    """BINDSSlicerLib.widgets.RunController drives these widgets of either module."""
    for module in MODULES:
        ui = ElementTree.parse(REPO / "Resources" / "UI" / f"{module}.ui").getroot()
        names = {widget.get("name") for widget in ui.iter("widget")}
        assert {"progressBar", "statusLabel", "applyButton", "cancelButton", "modelComboBox",
                "deviceComboBox"} <= names, module


def _binds_root_dir_function() -> typing.Callable[[str], str | None]:
    """bindsRootDir() from BINDSSlicerLib/paths.py, run without Slicer (it uses only os)."""
    source = (REPO / "BINDS" / SHARED_PACKAGE / "paths.py").read_text(encoding="utf-8")
    function = next(
        node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == "bindsRootDir"
    )
    namespace: dict[str, typing.Any] = {"os": os, "Optional": typing.Optional}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "paths.py", "exec"), namespace)
    return namespace["bindsRootDir"]


def test_bindslib_is_found_in_an_installed_extension_and_in_a_clone(tmp_path: Path):
    binds_root_dir = _binds_root_dir_function()

    installed = tmp_path / "installed" / "qt-scripted-modules"
    (installed / "BINDSLib").mkdir(parents=True)
    (installed / "BINDSLib" / "__init__.py").write_text("")
    (installed / "BINDS.py").write_text("")
    assert binds_root_dir(str(installed / "BINDS.py")) == str(installed)

    clone = tmp_path / "clone"
    (clone / "BINDS").mkdir(parents=True)
    (clone / "BINDSLib").mkdir()
    (clone / "BINDSLib" / "__init__.py").write_text("")
    (clone / "BINDS" / "BINDS.py").write_text("")
    assert binds_root_dir(str(clone / "BINDS" / "BINDS.py")) == str(clone)

    assert binds_root_dir(str(REPO / "BINDS" / "BINDS.py")) == str(REPO)
    assert binds_root_dir(str(tmp_path / "elsewhere" / "BINDS.py")) is None


# ---------------------------------------------------------------------------------------------
# Real CMake, with a stub of Slicer
# ---------------------------------------------------------------------------------------------

# The few variables and macros a pure-Python extension uses, with the copy and install semantics
# of Slicer's SlicerMacroBuildScriptedModule.cmake and CTK's ctkMacroCompilePythonScript.cmake.
# Stricter than the real macros in one way: a file copied outside DESTINATION_DIR is an error.
SLICER_CONFIG_STUB = f"""\
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE "${{CMAKE_CURRENT_LIST_DIR}}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${{CMAKE_CURRENT_LIST_DIR}}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${{CMAKE_CURRENT_LIST_DIR}}/SlicerExtensionCPack.cmake")
set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "{QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}")
"""

USE_SLICER_STUB = r"""
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET"
    "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "ctkMacroCompilePythonScript: unknown arguments ${MY_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  set(_stub_outputs)
  foreach(_stub_kind SCRIPTS RESOURCES)
    foreach(_stub_file ${MY_${_stub_kind}})
      if(_stub_kind STREQUAL "SCRIPTS")
        get_filename_component(_stub_ext ${_stub_file} EXT)
        if(NOT "${_stub_ext}" MATCHES "py")
          set(_stub_file "${_stub_file}.py")
        endif()
      endif()
      if(IS_ABSOLUTE "${_stub_file}" OR "${_stub_file}" MATCHES "(^|/)\\.\\.(/|$)")
        message(FATAL_ERROR "${MY_TARGET_NAME}: ${_stub_file} would be copied outside ${MY_DESTINATION_DIR}")
      endif()
      add_custom_command(
        OUTPUT "${MY_DESTINATION_DIR}/${_stub_file}"
        DEPENDS "${MY_SOURCE_DIR}/${_stub_file}"
        COMMAND ${CMAKE_COMMAND} -E copy "${MY_SOURCE_DIR}/${_stub_file}" "${MY_DESTINATION_DIR}/${_stub_file}")
      list(APPEND _stub_outputs "${MY_DESTINATION_DIR}/${_stub_file}")
    endforeach()
  endforeach()
  add_custom_target(Copy${MY_TARGET_NAME}PythonFiles ALL DEPENDS ${_stub_outputs})
  if(MY_NO_INSTALL_SUBDIR)
    install(DIRECTORY "${MY_DESTINATION_DIR}/" DESTINATION "${MY_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
  else()
    install(DIRECTORY "${MY_DESTINATION_DIR}" DESTINATION "${MY_INSTALL_DIR}" USE_SOURCE_PERMISSIONS)
  endif()
endmacro()

macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(_stub_value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_stub_value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_stub_value}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file or directory '${_stub_value}'")
    endif()
  endforeach()
  set(_stub_no_install_subdir NO_INSTALL_SUBDIR)
  set(_stub_destination_subdir "")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_stub_destination_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_stub_destination_subdir "/${_stub_destination_subdir}")
    set(_stub_no_install_subdir "")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_stub_destination_subdir}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    ${_stub_no_install_subdir}
    )
endmacro()

macro(slicer_add_python_unittest)
endmacro()
"""

GENERATE_CONFIG_STUB = r"""
foreach(_stub_var HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS)
  if("${EXTENSION_${_stub_var}}" STREQUAL "")
    message(FATAL_ERROR "EXTENSION_${_stub_var} is empty")
  endif()
endforeach()
"""

CPACK_STUB = r"""
if(DEFINED EXTENSION_LICENSE_FILE AND NOT EXISTS "${EXTENSION_LICENSE_FILE}")
  message(FATAL_ERROR "EXTENSION_LICENSE_FILE ${EXTENSION_LICENSE_FILE} does not exist")
endif()
"""


def _run(command: list[str], cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_cmake_installs_modules_bindslib_and_resources_side_by_side(tmp_path: Path, tree_with_added_files: Path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    slicer_dir = tmp_path / "Slicer-stub"
    slicer_dir.mkdir()
    (slicer_dir / "SlicerConfig.cmake").write_text(SLICER_CONFIG_STUB)
    (slicer_dir / "UseSlicer.cmake").write_text(USE_SLICER_STUB)
    (slicer_dir / "SlicerExtensionGenerateConfig.cmake").write_text(GENERATE_CONFIG_STUB)
    (slicer_dir / "SlicerExtensionCPack.cmake").write_text(CPACK_STUB)
    build, install = tmp_path / "build", tmp_path / "install"

    _run([cmake, "-S", str(tree_with_added_files), "-B", str(build), f"-DSlicer_DIR={slicer_dir}"])
    _run([cmake, "--build", str(build)])
    _run([cmake, "--install", str(build), "--prefix", str(install)])

    qt_scripted_modules = install / QTSCRIPTEDMODULES_LIB_DIR
    installed = sorted(
        p.relative_to(qt_scripted_modules).as_posix() for p in qt_scripted_modules.rglob("*") if p.is_file()
    )
    predicted = sorted(evaluate_extension(tree_with_added_files).destinations())
    assert installed == predicted
    for relative in ("BINDS.py", "BINDSRisk.py", f"{SHARED_PACKAGE}/paths.py", "BINDSLib/__init__.py",
                     "Resources/UI/BINDS.ui", *FILES_ADDED_LATER):
        assert relative in installed

    # The installed copy is a package Python imports (not the repository's editable install).
    location = _run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(qt_scripted_modules)!r}); "
         "import BINDSLib; print(BINDSLib.__file__)"],
        cwd=tmp_path,
    ).strip()
    assert Path(location) == qt_scripted_modules / "BINDSLib" / "__init__.py"
