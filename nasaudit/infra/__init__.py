"""Infrastructure the research modules stand on: errors and one-line messages (`errors`), size
limits on untrusted input (`limits`), atomic files and safe reading (`io`), output-directory
ownership (`outdir`), devices, precision and seeding (`device`), typed records (`records`), the
shipped data directories (`resources`), checkpoints and their sidecars (`checkpoint`), and the
settings dataclasses' declaration and checking (`params`)."""
