package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrInvalidAccessRule is returned, wrapped, for an action or subject that
// an access rule cannot contain.
var ErrInvalidAccessRule = errors.New("invalid access rule")

// Action is what a request does to a repository.
type Action string

// The actions an access rule can allow.
const (
	Pull   Action = "pull"
	Push   Action = "push"
	Delete Action = "delete"
)

// ParseAction parses "pull", "push" or "delete".
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case Pull, Push, Delete:
		return a, nil
	}
	return "", fmt.Errorf("%w: action %q: want pull, push or delete", ErrInvalidAccessRule, s)
}

// UnmarshalText parses text with ParseAction. On error a is left unchanged.
func (a *Action) UnmarshalText(text []byte) error {
	v, err := ParseAction(string(text))
	if err != nil {
		return err
	}
	*a = v
	return nil
}

// Identity is who makes a request, as authentication established it.
type Identity struct {
	// User is the authenticated user name; "" is anonymous.
	User string
	// Groups are the groups the configuration puts the user in.
	Groups []string
}

// String names the identity for messages: `user "NAME"` or "anonymous".
func (id Identity) String() string {
	if id.User == "" {
		return "anonymous"
	}
	return fmt.Sprintf("user %q", id.User)
}

// AccessRule allows some actions to some subjects on some repositories.
type AccessRule struct {
	// Name identifies the rule in decisions, for example "access[0]". When
	// empty, Decide names it by position.
	Name string
	// Subjects says whom the rule applies to. Each entry is "anonymous",
	// "authenticated", "group:NAME", "user:NAME" or a bare NAME (a user),
	// or "*" for anyone. A rule with no subjects applies to nobody.
	Subjects []string
	// Repositories selects repositories; empty selects all.
	Repositories Globs
	// Tags, when not empty, restricts the rule to requests for matching
	// tags. A request that names no tag matches on the repository alone.
	Tags Globs
	// Actions are allowed; every other action is denied. A rule with no
	// actions denies everything to the subjects it applies to.
	Actions []Action
}

// Validate checks every subject and action of the rule and returns all
// problems at once.
func (r AccessRule) Validate() error {
	var errs []error
	if len(r.Subjects) == 0 {
		errs = append(errs, fmt.Errorf("%w: no subjects: the rule applies to nobody", ErrInvalidAccessRule))
	}
	for _, s := range r.Subjects {
		if err := ValidateSubject(s); err != nil {
			errs = append(errs, err)
		}
	}
	for _, a := range r.Actions {
		if _, err := ParseAction(string(a)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ValidateSubject checks the spelling of one access-rule subject.
func ValidateSubject(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty subject", ErrInvalidAccessRule)
	case s == "*", s == "anonymous", s == "authenticated":
		return nil
	case strings.HasPrefix(s, "group:"):
		if strings.TrimPrefix(s, "group:") == "" {
			return fmt.Errorf("%w: subject %q names no group", ErrInvalidAccessRule, s)
		}
	case strings.HasPrefix(s, "user:"):
		if strings.TrimPrefix(s, "user:") == "" {
			return fmt.Errorf("%w: subject %q names no user", ErrInvalidAccessRule, s)
		}
	case strings.Contains(s, ":"):
		return fmt.Errorf("%w: subject %q: want anonymous, authenticated, *, group:NAME, user:NAME or NAME", ErrInvalidAccessRule, s)
	}
	return nil
}

// Access is the access configuration: whether it is enforced, and its rules
// in order.
type Access struct {
	// Enabled is false when authentication is off; every request is then
	// allowed.
	Enabled bool
	// Rules are tried in order; the first that applies decides.
	Rules []AccessRule
}

// AccessRequest is one action on a repository, and on a tag if it names one.
type AccessRequest struct {
	// Identity is who asks.
	Identity Identity
	// Action is what the request does.
	Action Action
	// Repo is the canonical repository name.
	Repo string
	// Tag is "" when the request names no tag (blobs, manifests by digest).
	Tag string
}

// AccessDecision is the outcome of Access.Decide.
type AccessDecision struct {
	// Allowed reports whether the request may proceed.
	Allowed bool
	// Rule is the deciding rule's name, "access: no rule applies" or
	// "access disabled".
	Rule string
	// Reason explains the decision to the person who made the request.
	Reason string
}

// Rule names used when no access rule decides.
const (
	RuleAccessDisabled = "access disabled"
	RuleNoAccessRule   = "access: no rule applies"
)

// Decide decides req. With access disabled everything is allowed. Otherwise
// the first rule that applies decides: a rule applies when one of its
// subjects matches the identity, its repositories match req.Repo and, if
// the rule has tag globs, either the request names a tag its globs match,
// or it names no tag and is not a delete. The actions it lists are allowed
// and all others denied. When no rule applies the request is denied.
//
// A tag-scoped rule thus decides blob uploads, blob and digest pulls and
// pushes by digest, which a tag push needs, but never a delete that names
// no tag: a delete by digest removes every tag on that digest and a blob
// delete can break any of them, so those need a rule for the whole
// repository. (The proxy also asks about each tag a delete by digest would
// remove.)
func (a Access) Decide(req AccessRequest) AccessDecision {
	if !a.Enabled {
		return AccessDecision{Allowed: true, Rule: RuleAccessDisabled, Reason: "access control is disabled"}
	}
	target := req.Repo
	if req.Tag != "" {
		target += ":" + req.Tag
	}
	for i, r := range a.Rules {
		if !r.applies(req.Identity, req.Action, req.Repo, req.Tag) {
			continue
		}
		name := ruleName(r.Name, "access", i)
		if slices.Contains(r.Actions, req.Action) {
			return AccessDecision{Allowed: true, Rule: name,
				Reason: fmt.Sprintf("%s may %s %s (rule %s)", req.Identity, req.Action, target, name)}
		}
		return AccessDecision{Rule: name,
			Reason: fmt.Sprintf("%s may not %s %s: rule %s applies and allows only %s",
				req.Identity, req.Action, target, name, actionList(r.Actions))}
	}
	return AccessDecision{Rule: RuleNoAccessRule,
		Reason: fmt.Sprintf("%s may not %s %s: no access rule applies, and access is denied by default",
			req.Identity, req.Action, target)}
}

// CanPullAny reports whether id may pull something from repo, for filtering
// the catalog. It walks the rules like Decide: a rule for id and repo that
// allows pull answers yes; one without tag globs that denies pull answers
// no, since it shadows every later rule; one with tag globs that denies
// pull shadows only its tags, so later rules are still consulted. It can
// answer yes for a repository whose every tag an earlier tag-scoped rule
// covers; pulls themselves are still decided one by one.
func (a Access) CanPullAny(id Identity, repo string) bool {
	if !a.Enabled {
		return true
	}
	for _, r := range a.Rules {
		if !r.matchesSubject(id) || !r.Repositories.Match(repo) {
			continue
		}
		if slices.Contains(r.Actions, Pull) {
			return true
		}
		if len(r.Tags) == 0 {
			return false
		}
	}
	return false
}

func (r AccessRule) applies(id Identity, action Action, repo, tag string) bool {
	switch {
	case !r.matchesSubject(id) || !r.Repositories.Match(repo):
		return false
	case len(r.Tags) == 0:
		return true
	case tag == "":
		return action != Delete
	}
	return r.Tags.Match(tag)
}

func (r AccessRule) matchesSubject(id Identity) bool {
	for _, s := range r.Subjects {
		if subjectMatches(s, id) {
			return true
		}
	}
	return false
}

func subjectMatches(s string, id Identity) bool {
	switch {
	case s == "*":
		return true
	case s == "anonymous":
		return id.User == ""
	case s == "authenticated":
		return id.User != ""
	case strings.HasPrefix(s, "group:"):
		g := strings.TrimPrefix(s, "group:")
		return g != "" && slices.Contains(id.Groups, g)
	case strings.HasPrefix(s, "user:"):
		s = strings.TrimPrefix(s, "user:")
	}
	return s != "" && id.User == s
}

func actionList(as []Action) string {
	if len(as) == 0 {
		return "nothing"
	}
	parts := make([]string, len(as))
	for i, a := range as {
		parts[i] = string(a)
	}
	return strings.Join(parts, ", ")
}

// ruleName returns name, or section[i] when the rule has none.
func ruleName(name, section string, i int) string {
	if name != "" {
		return name
	}
	return fmt.Sprintf("%s[%d]", section, i)
}
