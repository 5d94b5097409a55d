"""First boot, rehearsed: each cloud's node user data, exactly as the components render it, booted on
real Debian machines (systemd-nspawn, one per node, in network namespaces of their own) beside
emulated cloud services, then the job run on them through the CLI. Root only; see the README's
"First boot, rehearsed" and `python -m lepton_infra.rehearsal --help`.

Unlike `local/`, this package may import `components/` (it renders their user data, in a process
of its own) and `data/` (the store emulators): it sits above both, like the CLI."""
