package policy

import (
	"errors"
	"strings"
	"testing"
)

// issueAccess is the access section of the "push ACLs" issue, plus a
// developer rule: only the release bot may push v* tags to prod/**,
// developers may do anything in dev/**, anyone may pull public/**.
func issueAccess() Access {
	return Access{Enabled: true, Rules: []AccessRule{
		{Name: "access[0]", Subjects: []string{"group:releasers"}, Repositories: Globs{MustGlob("prod/**")},
			Tags: Globs{MustGlob("v*")}, Actions: []Action{Pull, Push}},
		{Name: "access[1]", Subjects: []string{"authenticated"}, Repositories: Globs{MustGlob("dev/**")},
			Actions: []Action{Pull, Push, Delete}},
		{Name: "access[2]", Subjects: []string{"anonymous", "authenticated"}, Repositories: Globs{MustGlob("public/**")},
			Actions: []Action{Pull}},
		{Name: "access[3]", Subjects: []string{"user:auditor", "carol"}, Repositories: Globs{MustGlob("prod/**")},
			Actions: []Action{Pull}},
	}}
}

var (
	releaseBot = Identity{User: "release-bot", Groups: []string{"releasers"}}
	developer  = Identity{User: "dev", Groups: []string{"developers"}}
	anonymous  = Identity{}
)

// TestAccessDecide walks the ACL matrix of the issue: every cell is one
// request and the rule that must decide it.
func TestAccessDecide(t *testing.T) {
	t.Parallel()
	acl := issueAccess()
	tests := []struct {
		name        string
		req         AccessRequest
		wantAllowed bool
		wantRule    string
	}{
		{"the release bot may push a v* tag to prod",
			AccessRequest{releaseBot, Push, "prod/team/app", "v1.2.3"}, true, "access[0]"},
		{"the release bot may upload blobs to prod, matching on the repository alone",
			AccessRequest{releaseBot, Push, "prod/team/app", ""}, true, "access[0]"},
		{"the release bot may not push a non-v* tag to prod",
			AccessRequest{releaseBot, Push, "prod/team/app", "latest"}, false, "access: no rule applies"},
		{"the release bot may not delete in prod",
			AccessRequest{releaseBot, Delete, "prod/team/app", "v1"}, false, "access[0]"},
		{"a developer may push anything to dev",
			AccessRequest{developer, Push, "dev/x/y", "whatever"}, true, "access[1]"},
		{"a developer may delete in dev",
			AccessRequest{developer, Delete, "dev/x", "t"}, true, "access[1]"},
		{"a developer may not push to prod",
			AccessRequest{developer, Push, "prod/team/app", "v1"}, false, "access: no rule applies"},
		{"a developer may not upload blobs to prod",
			AccessRequest{developer, Push, "prod/team/app", ""}, false, "access: no rule applies"},
		{"anonymous may pull public",
			AccessRequest{anonymous, Pull, "public/base", "1.0"}, true, "access[2]"},
		{"anonymous may not push to public",
			AccessRequest{anonymous, Push, "public/base", "1.0"}, false, "access[2]"},
		{"anonymous may not pull dev",
			AccessRequest{anonymous, Pull, "dev/app", "1.0"}, false, "access: no rule applies"},
		{"anonymous does not match authenticated",
			AccessRequest{anonymous, Pull, "dev/app", ""}, false, "access: no rule applies"},
		{"a user: subject matches that user",
			AccessRequest{Identity{User: "auditor"}, Pull, "prod/app", "v1"}, true, "access[3]"},
		{"a bare subject name matches that user",
			AccessRequest{Identity{User: "carol"}, Pull, "prod/app", "v1"}, true, "access[3]"},
		{"a group name is not a user name",
			AccessRequest{Identity{User: "releasers"}, Pull, "prod/app", "v1"}, false, "access: no rule applies"},
		{"a repository that merely shares the prefix is not under prod/**",
			AccessRequest{releaseBot, Push, "production/app", "v1"}, false, "access: no rule applies"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := acl.Decide(tc.req)
			if d.Allowed != tc.wantAllowed || d.Rule != tc.wantRule {
				t.Fatalf("Decide(%+v) = %+v; want allowed %v by %q", tc.req, d, tc.wantAllowed, tc.wantRule)
			}
			if !strings.Contains(d.Reason, tc.req.Identity.String()) || !strings.Contains(d.Reason, string(tc.req.Action)) ||
				!strings.Contains(d.Reason, tc.req.Repo) {
				t.Errorf("reason %q does not name the identity, action and repository", d.Reason)
			}
			if !tc.wantAllowed && tc.wantRule != RuleNoAccessRule && !strings.Contains(d.Reason, tc.wantRule) {
				t.Errorf("reason %q does not name the rule", d.Reason)
			}
		})
	}
}

// TestAccessDecideSubjects ensures each subject spelling matches exactly the
// identities it names.
func TestAccessDecideSubjects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		subject string
		id      Identity
		want    bool
	}{
		{"* matches anonymous", "*", anonymous, true},
		{"* matches a user", "*", developer, true},
		{"anonymous matches no user", "anonymous", anonymous, true},
		{"anonymous does not match a user", "anonymous", developer, false},
		{"authenticated matches a user", "authenticated", developer, true},
		{"authenticated does not match anonymous", "authenticated", anonymous, false},
		{"group matches a member", "group:developers", developer, true},
		{"group does not match a non-member", "group:developers", releaseBot, false},
		{"an empty group name matches nobody", "group:", Identity{User: "x", Groups: []string{""}}, false},
		{"user: matches that user", "user:dev", developer, true},
		{"user: does not match another user", "user:dev", releaseBot, false},
		{"an empty user name does not match anonymous", "user:", anonymous, false},
		{"an empty subject does not match anonymous", "", anonymous, false},
		{"a user literally named anonymous needs user:", "user:anonymous", Identity{User: "anonymous"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			acl := Access{Enabled: true, Rules: []AccessRule{{Subjects: []string{tc.subject}, Actions: []Action{Pull}}}}
			d := acl.Decide(AccessRequest{Identity: tc.id, Action: Pull, Repo: "r"})
			if d.Allowed != tc.want {
				t.Errorf("subject %q, identity %+v: allowed = %v, want %v (%s)", tc.subject, tc.id, d.Allowed, tc.want, d.Reason)
			}
		})
	}
}

// TestAccessFirstRuleDecides ensures an earlier applying rule decides even
// when a later one would allow, and a rule with no actions denies.
func TestAccessFirstRuleDecides(t *testing.T) {
	t.Parallel()
	acl := Access{Enabled: true, Rules: []AccessRule{
		{Subjects: []string{"user:mallory"}, Repositories: Globs{MustGlob("**")}},
		{Subjects: []string{"*"}, Repositories: Globs{MustGlob("**")}, Actions: []Action{Pull, Push}},
	}}
	d := acl.Decide(AccessRequest{Identity: Identity{User: "mallory"}, Action: Pull, Repo: "a"})
	if d.Allowed || d.Rule != "access[0]" || !strings.Contains(d.Reason, "allows only nothing") {
		t.Errorf("mallory: %+v; want denied by access[0]", d)
	}
	d = acl.Decide(AccessRequest{Identity: Identity{User: "bob"}, Action: Push, Repo: "a"})
	if !d.Allowed || d.Rule != "access[1]" {
		t.Errorf("bob: %+v; want allowed by access[1]", d)
	}
}

// TestAccessDisabled ensures that with authentication off every request is
// allowed, whatever the rules say.
func TestAccessDisabled(t *testing.T) {
	t.Parallel()
	acl := issueAccess()
	acl.Enabled = false
	d := acl.Decide(AccessRequest{Identity: anonymous, Action: Delete, Repo: "prod/app", Tag: "v1"})
	if !d.Allowed || d.Rule != RuleAccessDisabled {
		t.Errorf("Decide = %+v; want allowed, access disabled", d)
	}
	if !acl.CanPullAny(anonymous, "prod/app") {
		t.Error("CanPullAny with access disabled = false")
	}
}

// TestAccessCanPullAny ensures the catalog shows a repository exactly when
// the caller may pull something from it.
func TestAccessCanPullAny(t *testing.T) {
	t.Parallel()
	acl := issueAccess()
	acl.Rules = append(acl.Rules,
		AccessRule{Name: "push-only", Subjects: []string{"group:pushers"}, Repositories: Globs{MustGlob("drop/**")},
			Tags: Globs{MustGlob("in-*")}, Actions: []Action{Push}},
		AccessRule{Name: "everyone-drop", Subjects: []string{"authenticated"}, Repositories: Globs{MustGlob("drop/**")},
			Actions: []Action{Pull}},
		AccessRule{Name: "blocked", Subjects: []string{"user:eve"}, Repositories: Globs{MustGlob("secret")}},
		AccessRule{Name: "secret", Subjects: []string{"authenticated"}, Repositories: Globs{MustGlob("secret")},
			Actions: []Action{Pull}},
	)
	tests := []struct {
		name string
		id   Identity
		repo string
		want bool
	}{
		{"anonymous sees public", anonymous, "public/base", true},
		{"anonymous does not see dev", anonymous, "dev/app", false},
		{"the release bot sees prod", releaseBot, "prod/app", true},
		{"a developer does not see prod", developer, "prod/app", false},
		{"a push-only tag rule does not hide tags a later rule lets the caller pull",
			Identity{User: "p", Groups: []string{"pushers"}}, "drop/x", true},
		{"a rule without tag globs that denies pull hides the repository", Identity{User: "eve"}, "secret", false},
		{"others see the repository the blocking rule does not cover", Identity{User: "bob"}, "secret", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := acl.CanPullAny(tc.id, tc.repo); got != tc.want {
				t.Errorf("CanPullAny(%v, %q) = %v, want %v", tc.id, tc.repo, got, tc.want)
			}
		})
	}
}

// TestAccessRuleValidate ensures misspelt subjects and actions are reported,
// all at once.
func TestAccessRuleValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		rule      AccessRule
		wantParts []string
	}{
		{"a well-formed rule is valid",
			AccessRule{Subjects: []string{"*", "anonymous", "authenticated", "group:g", "user:u", "bob"}, Actions: []Action{Pull, Push, Delete}},
			nil},
		{"a rule without subjects is invalid", AccessRule{Actions: []Action{Pull}}, []string{"no subjects"}},
		{"every bad subject and action is reported",
			AccessRule{Subjects: []string{"group:", "user:", "", "team:x"}, Actions: []Action{"write", Pull}},
			[]string{`"group:" names no group`, `"user:" names no user`, "empty subject", `"team:x"`, `action "write"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.rule.Validate()
			if len(tc.wantParts) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidAccessRule) {
				t.Fatalf("Validate() = %v, want ErrInvalidAccessRule", err)
			}
			for _, p := range tc.wantParts {
				if !strings.Contains(err.Error(), p) {
					t.Errorf("error %q does not mention %q", err, p)
				}
			}
		})
	}
}

// TestParseAction ensures the three actions parse and anything else is refused.
func TestParseAction(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"pull", "push", "delete"} {
		var a Action
		if err := a.UnmarshalText([]byte(s)); err != nil || string(a) != s {
			t.Errorf("UnmarshalText(%q) = %q, %v", s, a, err)
		}
	}
	for _, s := range []string{"", "Pull", "write", "*"} {
		a := Pull
		if err := a.UnmarshalText([]byte(s)); !errors.Is(err, ErrInvalidAccessRule) || a != Pull {
			t.Errorf("UnmarshalText(%q) = %q, %v; want ErrInvalidAccessRule and no change", s, a, err)
		}
	}
}

// TestAccessTagScopedDelete ensures a right to delete some tags is not a
// right to delete content: a delete by digest or of a blob names no tag and
// removes or breaks every tag on it, so a tag-scoped rule never grants it,
// while a later repository-wide rule still can.
func TestAccessTagScopedDelete(t *testing.T) {
	t.Parallel()
	mallory := Identity{User: "mallory"}
	acl := Access{Enabled: true, Rules: []AccessRule{
		{Name: "own-tags", Subjects: []string{"mallory"}, Repositories: Globs{MustGlob("shared/**")},
			Tags: Globs{MustGlob("mallory-*")}, Actions: []Action{Pull, Push, Delete}},
		{Name: "scratch", Subjects: []string{"mallory"}, Repositories: Globs{MustGlob("scratch/**")},
			Actions: []Action{Pull, Push, Delete}},
	}}
	tests := []struct {
		name     string
		req      AccessRequest
		allowed  bool
		wantRule string
	}{
		{"deleting an own tag", AccessRequest{mallory, Delete, "shared/app", "mallory-1"}, true, "own-tags"},
		{"deleting another's tag", AccessRequest{mallory, Delete, "shared/app", "latest"}, false, RuleNoAccessRule},
		{"deleting by digest", AccessRequest{mallory, Delete, "shared/app", ""}, false, RuleNoAccessRule},
		{"uploading blobs for an own tag", AccessRequest{mallory, Push, "shared/app", ""}, true, "own-tags"},
		{"pulling by digest", AccessRequest{mallory, Pull, "shared/app", ""}, true, "own-tags"},
		{"deleting by digest where a repository-wide rule allows it", AccessRequest{mallory, Delete, "scratch/app", ""}, true, "scratch"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := acl.Decide(tc.req)
			if d.Allowed != tc.allowed || d.Rule != tc.wantRule {
				t.Errorf("Decide(%+v) = %+v; want allowed %v by %q", tc.req, d, tc.allowed, tc.wantRule)
			}
		})
	}
}
