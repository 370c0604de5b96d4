package policy_test

import (
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
)

// A tag write: look up the configured mode, keep a binding recorded as
// immutable immutable, then decide against the live binding.
func ExampleDecideWrite() {
	im := policy.DefaultImmutability()
	first, other := digest.FromString("first"), digest.FromString("other")

	configured, rule := im.ModeFor("team/app", "v1.0.0")
	mode := policy.Effective(configured, policy.Immutable)
	fmt.Println(mode, "by", rule)
	fmt.Println(policy.DecideWrite(mode, "", first))
	fmt.Println(policy.DecideWrite(mode, first, first))
	fmt.Println(policy.DecideWrite(mode, first, other))

	configured, rule = im.ModeFor("team/app", "latest")
	fmt.Println(configured, "by", rule, "->", policy.DecideWrite(configured, first, other))
	// Output:
	// immutable by immutability.default
	// bind
	// identical
	// deny
	// mutable by immutability.rules[0] (built-in) -> move
}

// Push ACLs: the release bot may push v* tags to prod, and upload the blobs
// they need, but nothing else there.
func ExampleAccess_Decide() {
	globs := func(p ...string) policy.Globs {
		gs, err := policy.CompileGlobs(p)
		if err != nil {
			panic(err)
		}
		return gs
	}
	acl := policy.Access{Enabled: true, Rules: []policy.AccessRule{{
		Name:         "access[0]",
		Subjects:     []string{"group:releasers"},
		Repositories: globs("prod/**"),
		Tags:         globs("v*"),
		Actions:      []policy.Action{policy.Pull, policy.Push},
	}}}
	bot := policy.Identity{User: "release-bot", Groups: []string{"releasers"}}
	for _, tag := range []string{"v1.2.3", "", "latest"} {
		d := acl.Decide(policy.AccessRequest{Identity: bot, Action: policy.Push, Repo: "prod/app", Tag: tag})
		fmt.Printf("%v: %s\n", d.Allowed, d.Reason)
	}
	// Output:
	// true: user "release-bot" may push prod/app:v1.2.3 (rule access[0])
	// true: user "release-bot" may push prod/app (rule access[0])
	// false: user "release-bot" may not push prod/app:latest: no access rule applies, and access is denied by default
}

// A retention plan: releases and recent builds stay, an old build goes,
// and with it the digest no other tag points to.
func ExamplePlan() {
	now := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	p := policy.RetentionPolicy{
		Name: "retention.policies[0]",
		Keep: []policy.KeepRule{
			{Tags: policy.Globs{policy.MustGlob("v*")}},
			{PushedWithin: 720 * time.Hour},
		},
		Untagged: policy.UntaggedDelete,
	}
	in := policy.RepoState{
		Repository: "ci/app",
		Tags: []policy.TagState{
			{Tag: "v1", Digest: digest.FromString("v1"), PushedAt: now.Add(-400 * 24 * time.Hour), Mode: policy.Immutable},
			{Tag: "build-9", Digest: digest.FromString("b9"), PushedAt: now.Add(-48 * time.Hour), Mode: policy.Mutable},
			{Tag: "build-1", Digest: digest.FromString("b1"), PushedAt: now.Add(-900 * time.Hour), Mode: policy.Mutable},
		},
		Manifests: []policy.ManifestState{{Digest: digest.FromString("b1"), Size: 4096}},
	}
	plan := policy.Plan(now, p, in)
	for _, t := range plan.Tags {
		fmt.Printf("%-8s kept=%-5v %s\n", t.Tag, t.Kept, t.Reason)
	}
	fmt.Printf("delete %d tag(s) and %d manifest(s), freeing %d bytes\n",
		plan.Totals.TagsDeleted, plan.Totals.ManifestsDeleted, plan.Totals.BytesFreed)
	// Output:
	// build-1  kept=false no keep rule retains it
	// build-9  kept=true  kept by retention.policies[0].keep[1] (pushed_within: 720h, pushed 48h ago)
	// v1       kept=true  kept by retention.policies[0].keep[0] (tags: v*)
	// delete 1 tag(s) and 1 manifest(s), freeing 4096 bytes
}
