package config

import (
	"fmt"

	"github.com/taglock/taglock/policy"
)

// ImmutabilityPolicy turns the immutability section into policy values.
// The config must have passed Validate.
func (c Config) ImmutabilityPolicy() (policy.Immutability, error) {
	def, err := policy.ParseMode(c.Immutability.Default)
	if err != nil {
		return policy.Immutability{}, fmt.Errorf("immutability.default: %w", err)
	}
	im := policy.Immutability{Default: def}
	for i, r := range c.Immutability.Rules {
		name := fmt.Sprintf("immutability.rules[%d]", i)
		repos, err := policy.CompileGlobs(r.Repositories)
		if err != nil {
			return policy.Immutability{}, fmt.Errorf("%s.repositories: %w", name, err)
		}
		tags, err := policy.CompileGlobs(r.Tags)
		if err != nil {
			return policy.Immutability{}, fmt.Errorf("%s.tags: %w", name, err)
		}
		mode, err := policy.ParseMode(r.Mode)
		if err != nil {
			return policy.Immutability{}, fmt.Errorf("%s.mode: %w", name, err)
		}
		im.Rules = append(im.Rules, policy.Rule{Name: name, Repositories: repos, Tags: tags, Mode: mode})
	}
	return im, nil
}

// PromotionPolicy turns the promotion section into policy values.
func (c Config) PromotionPolicy() ([]policy.PromotionRule, error) {
	var out []policy.PromotionRule
	for i, r := range c.Promotion {
		if r.Require == "" {
			r.Require = "same-tag"
		}
		req, err := policy.ParseRequire(r.Require)
		if err != nil {
			return nil, fmt.Errorf("promotion[%d].require: %w", i, err)
		}
		pr := policy.PromotionRule{Name: fmt.Sprintf("promotion[%d]", i), Into: r.Into, From: r.From, Require: req}
		if err := pr.Validate(); err != nil {
			return nil, fmt.Errorf("promotion[%d]: %w", i, err)
		}
		out = append(out, pr)
	}
	return out, nil
}

// AccessPolicy turns the access section into policy values. Access is
// enabled whenever auth.mode is not none.
func (c Config) AccessPolicy() (policy.Access, error) {
	a := policy.Access{Enabled: c.Auth.Mode != "" && c.Auth.Mode != "none"}
	for i, r := range c.Access {
		name := fmt.Sprintf("access[%d]", i)
		repos, err := policy.CompileGlobs(r.Repositories)
		if err != nil {
			return policy.Access{}, fmt.Errorf("%s.repositories: %w", name, err)
		}
		tags, err := policy.CompileGlobs(r.Tags)
		if err != nil {
			return policy.Access{}, fmt.Errorf("%s.tags: %w", name, err)
		}
		rule := policy.AccessRule{Name: name, Subjects: r.Subjects, Repositories: repos, Tags: tags}
		for _, s := range r.Actions {
			act, err := policy.ParseAction(s)
			if err != nil {
				return policy.Access{}, fmt.Errorf("%s.actions: %w", name, err)
			}
			rule.Actions = append(rule.Actions, act)
		}
		if err := rule.Validate(); err != nil {
			return policy.Access{}, fmt.Errorf("%s: %w", name, err)
		}
		a.Rules = append(a.Rules, rule)
	}
	return a, nil
}

// RetentionSettings turns the retention section into policy values. The
// config must have passed Validate.
func (c Config) RetentionSettings() (policy.Retention, error) {
	r := policy.Retention{Schedule: c.Retention.Schedule.Std(), MaxDeletions: c.Retention.MaxDeletions}
	for i, p := range c.Retention.Policies {
		name := fmt.Sprintf("retention.policies[%d]", i)
		repos, err := policy.CompileGlobs(p.Repositories)
		if err != nil {
			return policy.Retention{}, fmt.Errorf("%s.repositories: %w", name, err)
		}
		rp := policy.RetentionPolicy{Name: name, Repositories: repos, UntaggedGrace: p.UntaggedGrace.Std(),
			Immutable: policy.ImmutableRetention{ReleaseAfter: p.Immutable.ReleaseAfter.Std()}}
		if p.Untagged != "" {
			if rp.Untagged, err = policy.ParseUntagged(p.Untagged); err != nil {
				return policy.Retention{}, fmt.Errorf("%s.untagged: %w", name, err)
			}
		}
		for j, k := range p.Keep {
			tags, err := policy.CompileGlobs(k.Tags)
			if err != nil {
				return policy.Retention{}, fmt.Errorf("%s.keep[%d].tags: %w", name, j, err)
			}
			rp.Keep = append(rp.Keep, policy.KeepRule{Name: fmt.Sprintf("%s.keep[%d]", name, j), Tags: tags,
				MostRecent: k.MostRecent, PushedWithin: k.PushedWithin.Std(), PulledWithin: k.PulledWithin.Std()})
		}
		r.Policies = append(r.Policies, rp)
	}
	if err := r.Validate(); err != nil {
		return policy.Retention{}, err
	}
	return r, nil
}
