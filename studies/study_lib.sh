# Shared by the study scripts (source it): archive each finished run's small files in reports/ (committed)
# and restore them into the runs folder on start, so a study resumes across sessions where it stopped.

# run_commit: the checked-out commit, "+dirty" when tracked files have changes (what studies/sweep.py's
# commit() records in sweep.json), for a script that runs adarank without sweep.py to record with its run.
run_commit() {
    local head
    head=$(git rev-parse --short HEAD 2>/dev/null) || head=unknown
    if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then head+="+dirty"; fi
    echo "$head"
}

# archive_run RUN_DIR DEST [adapters]: copy sweep.json, commit.txt, metrics.json, allocation.json and
# train_log.json (those present; the log is a few kB: the report reads its training loss)
# and, with "adapters", the native export adapter/ (tens of kB), replacing an earlier copy.
archive_run() {
    local run=$1 dest=$2 adapters=${3:-}
    mkdir -p "$dest"
    local file
    for file in sweep.json commit.txt metrics.json allocation.json train_log.json; do
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

# claimed CLAIMS NAME COMMAND...: run COMMAND (a function too: same shell) holding the lock CLAIMS/NAME.lock
# (flock), so workers of one study running side by side never run the same point; while another process
# holds it, skip (a line said, status 0). The lock goes when COMMAND ends or its worker is stopped.
claimed() {
    local claims=$1 name=$2 fd status
    shift 2
    mkdir -p "$claims"
    exec {fd}>"$claims/$name.lock"
    if ! flock -n "$fd"; then
        echo "$name: another worker is on it"
        exec {fd}>&-
        return 0
    fi
    "$@"
    status=$?
    exec {fd}>&-
    return $status
}

# wait_for_claims CLAIMS: return once no process holds a lock under CLAIMS (what other workers were on has
# finished, or they stopped: run the points again after it to fill what a stopped worker left).
wait_for_claims() {
    local lock
    for lock in "$1"/*.lock; do
        if [ -e "$lock" ]; then flock "$lock" true; fi
    done
    return 0
}

# sweep_point OUT ARCHIVE DIR METHOD SEED OVERRIDES SET...: one run of studies/sweep.py (METHOD at SEED,
# the space-separated OVERRIDES as its budget, SET... as --set) into DIR, then archive OUT's finished runs
# into ARCHIVE. Status 1 if the run failed (what finished is archived all the same).
sweep_point() {
    local out=$1 archive=$2 dir=$3 method=$4 seed=$5 overrides=$6 status=0
    shift 6
    python studies/sweep.py --out "$dir" --methods "$method" --seeds "$seed" --budgets "$overrides" --set "$@" ||
        status=1
    archive_runs "$out" "$archive"
    return $status
}
