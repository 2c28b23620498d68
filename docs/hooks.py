"""mkdocs hook: serve the repository's committed figures/*.png and results/**/*.md in the site.

Docs pages link them with the relative paths that also work on GitHub, e.g. ``../figures/overlap.png``
and ``../results/truthfulqa/summary.md`` from ``docs/results.md``. mkdocs only serves files under
``docs/`` and the project keeps no symlinks or copies, so this hook adds the files themselves to the
build (the summaries become pages of the site) and rewrites those links, for mkdocs only, to the
paths the files get in the site. Nothing is fetched; nothing is written under ``docs/``.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
SERVED = {"figures": "*.png", "results": "*.md"}  # repository folder -> the files of it the site serves


def on_files(files, config):
    for folder, pattern in SERVED.items():
        for path in sorted((ROOT / folder).rglob(pattern)):
            files.append(File(path.relative_to(ROOT).as_posix(), str(ROOT), config["site_dir"],
                              config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")  # docs/results.md: 0, docs/reference/api.md: 1
    for folder in SERVED:
        markdown = markdown.replace(f"]({'../' * (depth + 1)}{folder}/", f"]({'../' * depth}{folder}/")
    return markdown
