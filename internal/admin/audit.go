package admin

import (
	"context"
	"errors"
	"io"

	"github.com/rs/zerolog"

	"github.com/taglock/taglock/proxy"
	"github.com/taglock/taglock/storage"
)

// This file holds the operations of Local that change the ledger, each
// writing audit events (Local.Audit) that name what changed and who asked
// (Caller). The proxy's tools audit each tag they touch as well ("adopted",
// "repaired"), and retention each deletion.

// Import reads an export into the ledger as storage.Ledger.Import does. A
// refusal is audited as one "refused" event per contradicting record and a
// "ledger-import-refused" summary; an import as a "ledger-imported" event
// with the counts, and one "binding-replaced" event per binding a forced
// import replaced.
func (l Local) Import(ctx context.Context, r io.Reader, o storage.ImportOptions) (storage.ImportStats, error) {
	st, err := l.Ledger.Import(ctx, r, o)
	who := Caller(ctx)
	var ce *storage.ContradictionError
	if errors.As(err, &ce) {
		for _, c := range ce.Contradictions {
			contradiction(l.Audit.Warn(), c).Str("event", "refused").Str("reason", "import-contradicts-ledger").Str("user", who).
				Msg("ledger import refused: the record would change what the ledger holds for the tag")
		}
		l.Audit.Warn().Str("event", "ledger-import-refused").Int("contradictions", len(ce.Contradictions)).Str("user", who).
			Msg("ledger import refused: records contradict the ledger; no recorded binding was changed")
	}
	written := st.Bindings + st.Events + st.Manifests + st.Pulls + st.Reservations
	if err == nil || written > 0 {
		ev := l.Audit.Info()
		if len(st.Replaced) > 0 || err != nil {
			ev = l.Audit.Warn()
		}
		ev = ev.Str("event", "ledger-imported").Int("bindings", st.Bindings).Int("events", st.Events).Int("manifests", st.Manifests).
			Int("pulls", st.Pulls).Int("reservations", st.Reservations).Int("replaced", len(st.Replaced)).Bool("force", o.Force).Str("user", who)
		if err != nil {
			ev = ev.AnErr("error", err)
		}
		ev.Msg("ledger import")
		for _, c := range st.Replaced {
			contradiction(l.Audit.Warn(), c).Str("event", "binding-replaced").Str("user", who).
				Msg("ledger import --force replaced what the ledger held for the tag")
		}
	}
	return st, err
}

// contradiction adds what c would change to ev: repo, tag, record, every
// change as "field recorded -> incoming", and the recorded and incoming
// digests when the digest changes.
func contradiction(ev *zerolog.Event, c storage.Contradiction) *zerolog.Event {
	changes := make([]string, len(c.Changes))
	for i, ch := range c.Changes {
		changes[i] = ch.Field + " " + ch.Recorded + " -> " + ch.Incoming
		if ch.Field == "digest" {
			ev = ev.Str("recorded", ch.Recorded).Str("digest", ch.Incoming)
		}
	}
	return ev.Str("repo", c.Repo).Str("tag", c.Tag).Int("record", c.Record).Strs("changes", changes)
}

// auditImport writes the "upstream-imported" summary of an import of the
// upstream's tags that adopted any; the proxy audits each adoption.
func (l Local) auditImport(ctx context.Context, rep proxy.ImportReport, err error) {
	if rep.Adopted == 0 {
		return
	}
	ev := l.Audit.Info().Str("event", "upstream-imported").Int("repositories", rep.Repositories).Int("tags", rep.Tags).
		Int("adopted", rep.Adopted).Int("skipped", rep.Skipped).Str("user", Caller(ctx))
	if err != nil {
		ev = ev.AnErr("error", err)
	}
	ev.Msg("adopted upstream tags into the ledger")
}

// auditRepair writes the "verify-repaired" summary of a repair that
// restored or failed to restore any tag; the proxy audits each restore.
func (l Local) auditRepair(ctx context.Context, repairs []proxy.RepairResult) {
	restored, failed := 0, 0
	for _, r := range repairs {
		switch r.Outcome {
		case proxy.RepairRestored:
			restored++
		case proxy.RepairFailed:
			failed++
		}
	}
	if restored+failed == 0 {
		return
	}
	ev := l.Audit.Warn()
	if failed == 0 {
		ev = l.Audit.Info()
	}
	ev.Str("event", "verify-repaired").Int("restored", restored).Int("failed", failed).Str("user", Caller(ctx)).
		Msg("verify --repair put drifted immutable tags back")
}
