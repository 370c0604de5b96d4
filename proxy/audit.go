package proxy

import (
	"context"
	"fmt"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/storage"
)

// refuse writes the audit event and the ledger history for a refusal.
func (s *Server) refuse(ctx context.Context, v *Violation) {
	ri := info(ctx)
	s.audit.Warn().Str("event", "refused").Str("reason", v.Reason).Str("repo", v.Repo).Str("tag", v.Tag).
		Str("recorded", v.Recorded.String()).Str("attempted", v.Attempted.String()).Str("rule", v.Rule).Str("mode", v.Mode).
		Str("user", ri.user).Str("request_id", ri.id).Time("first_pushed", v.PushedAt).Str("first_pushed_by", v.PushedBy).
		Msg(v.Error())
	if s.metrics != nil {
		s.metrics.refused(v.Reason)
	}
	ev := storage.Event{Time: s.now(), Kind: storage.EventRefused, Repo: v.Repo, Tag: v.Tag, Digest: v.Attempted,
		Previous: v.Recorded, User: ri.user, Rule: v.Rule, Reason: v.Reason, Message: v.Error(), RequestID: ri.id}
	if err := s.ledger.Append(context.WithoutCancel(ctx), ev); err != nil {
		s.log.Error().Err(err).Msg("could not record refusal in the ledger history")
	}
}

// warned logs and counts what immutable mode would have refused.
func (s *Server) warned(ev storage.Event) {
	s.audit.Warn().Str("event", "warned").Str("reason", ev.Reason).Str("repo", ev.Repo).Str("tag", ev.Tag).
		Str("previous", ev.Previous.String()).Str("digest", ev.Digest.String()).Str("rule", ev.Rule).
		Str("user", ev.User).Str("request_id", ev.RequestID).Msg(ev.Message)
	if s.metrics != nil {
		s.metrics.warned(ev.Reason)
	}
}

func (s *Server) warnDelete(ctx context.Context, repo, tag string, bound digest.Digest, rule string) {
	ri := info(ctx)
	ev := storage.Event{Time: s.now(), Kind: storage.EventWarned, Repo: repo, Tag: tag, Digest: bound, User: ri.user,
		Rule: rule, Reason: ReasonTagDeleted, RequestID: ri.id,
		Message: fmt.Sprintf("warn mode: tag %q deleted; immutable mode would have refused it", repo+":"+tag)}
	s.warned(ev)
	if err := s.ledger.Append(context.WithoutCancel(ctx), ev); err != nil {
		s.log.Error().Err(err).Msg("could not record warning in the ledger history")
	}
}
