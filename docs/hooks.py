"""mkdocs hook: the examples' results pages (`examples/RESULTS.md` and everything in
`examples/results/`) become pages and files of the site, `results.md` and `results/...`,
read from where they are in the repository instead of kept twice. Their links point at
each other within that folder, so they resolve in the site as on GitHub."""

from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    examples = root / "examples"
    files.append(File.generated(config, "results.md", abs_src_path=str(examples / "RESULTS.md")))
    for path in sorted((examples / "results").iterdir()):
        if path.is_file() and not path.name.startswith("."):
            files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files
