package proxy

import (
	"context"
	"fmt"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/rs/zerolog"

	"github.com/taglock/taglock/storage"
)

// auditor writes what taglock refused, warned about and removed: one audit
// line each, a metric, and, for refusals and warnings, an event in the
// ledger's history. A history event that cannot be written is logged, never
// a reason to answer differently.
type auditor struct {
	audit   zerolog.Logger
	log     zerolog.Logger
	metrics *Metrics
	ledger  Ledger
	now     func() time.Time
}

// refuse records a refusal.
func (a auditor) refuse(ctx context.Context, v *Violation) {
	ri := info(ctx)
	a.audit.Warn().Str("event", "refused").Str("reason", v.Reason).Str("repo", v.Repo).Str("tag", v.Tag).
		Str("recorded", v.Recorded.String()).Str("attempted", v.Attempted.String()).Str("rule", v.Rule).Str("mode", v.Mode).
		Str("user", ri.user).Str("request_id", ri.id).Time("first_pushed", v.PushedAt).Str("first_pushed_by", v.PushedBy).
		Msg(v.Error())
	if a.metrics != nil {
		a.metrics.refused(v.Reason)
	}
	ev := storage.Event{Time: a.now(), Kind: storage.EventRefused, Repo: v.Repo, Tag: v.Tag, Digest: v.Attempted,
		Previous: v.Recorded, User: ri.user, Rule: v.Rule, Reason: v.Reason, Message: v.Error(), RequestID: ri.id}
	if err := a.ledger.Append(context.WithoutCancel(ctx), ev); err != nil {
		a.log.Error().Err(err).Msg("could not record refusal in the ledger history")
	}
}

// refuseAccess records a refusal by the access rules.
func (a auditor) refuseAccess(ctx context.Context, e *accessDenied) {
	ri := info(ctx)
	a.audit.Warn().Str("event", "refused").Str("reason", ReasonAccessDenied).Str("action", string(e.action)).
		Str("repo", e.repo).Str("tag", e.tag).Str("rule", e.rule).Str("user", ri.user).Str("request_id", ri.id).Msg(e.reason)
	if a.metrics != nil {
		a.metrics.refused(ReasonAccessDenied)
	}
}

// unauthenticated records a request refused for its credentials.
func (a auditor) unauthenticated(ctx context.Context, repo, what, msg string) {
	ri := info(ctx)
	a.audit.Warn().Str("event", "refused").Str("reason", "unauthenticated").Str("need", what).Str("repo", repo).
		Str("user", ri.user).Str("request_id", ri.id).Msg(msg)
	if a.metrics != nil {
		a.metrics.refused("unauthenticated")
	}
}

// warned logs and counts what immutable mode would have refused.
func (a auditor) warned(ev storage.Event) {
	a.audit.Warn().Str("event", "warned").Str("reason", ev.Reason).Str("repo", ev.Repo).Str("tag", ev.Tag).
		Str("previous", ev.Previous.String()).Str("digest", ev.Digest.String()).Str("rule", ev.Rule).
		Str("user", ev.User).Str("request_id", ev.RequestID).Msg(ev.Message)
	if a.metrics != nil {
		a.metrics.warned(ev.Reason)
	}
}

// warnDelete records the delete of a warn-mode tag.
func (a auditor) warnDelete(ctx context.Context, repo, tag string, bound digest.Digest, rule string) {
	ri := info(ctx)
	ev := storage.Event{Time: a.now(), Kind: storage.EventWarned, Repo: repo, Tag: tag, Digest: bound, User: ri.user,
		Rule: rule, Reason: ReasonTagDeleted, RequestID: ri.id,
		Message: fmt.Sprintf("warn mode: tag %q deleted; immutable mode would have refused it", repo+":"+tag)}
	a.warned(ev)
	if err := a.ledger.Append(context.WithoutCancel(ctx), ev); err != nil {
		a.log.Error().Err(err).Msg("could not record warning in the ledger history")
	}
}

// deleted records the tags a client's delete removed.
func (a auditor) deleted(ctx context.Context, bs []storage.Binding) {
	ri := info(ctx)
	for _, b := range bs {
		a.audit.Info().Str("event", "deleted").Str("repo", b.Repo).Str("tag", b.Tag).Str("digest", b.Digest.String()).
			Str("user", ri.user).Str("request_id", ri.id).Msg("tag deleted")
	}
}
