# Shared by the study scripts (source it): archive each finished run's small files in reports/ (committed)
# and restore them into the runs folder on start, so a study resumes across sessions where it stopped.

# archive_run RUN_DIR DEST [adapters]: copy sweep.json, metrics.json, allocation.json and train_log.json
# (those present; the log is a few kB: the report reads its training loss)
# and, with "adapters", the native export adapter/ (tens of kB), replacing an earlier copy.
archive_run() {
    local run=$1 dest=$2 adapters=${3:-}
    mkdir -p "$dest"
    local file
    for file in sweep.json metrics.json allocation.json train_log.json; do
        [ -f "$run/$file" ] && cp "$run/$file" "$dest/"
    done
    if [ "$adapters" = adapters ] && [ -d "$run/adapter" ]; then
        rm -rf "$dest/adapter" && cp -r "$run/adapter" "$dest/adapter"
    fi
    return 0
}

# archive_runs OUT ARCHIVE [adapters]: archive_run every finished run (a seed*/ folder with metrics.json)
# under OUT into the same relative path under ARCHIVE.
archive_runs() {
    local out=$1 archive=$2 adapters=${3:-} marker run
    while IFS= read -r marker; do
        run=${marker%/metrics.json}
        archive_run "$run" "$archive/${run#"$out"/}" "$adapters"
    done < <(find "$out" -path '*/seed*/metrics.json' -not -path '*/adapter/*' | sort)
}

# restore_runs OUT ARCHIVE: copy the archive into OUT without overwriting (finished runs are then skipped).
restore_runs() {
    mkdir -p "$1" && if [ -d "$2" ]; then cp -rn "$2"/. "$1"/; fi
}
