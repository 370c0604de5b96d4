package retention

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
)

// rawManifest is the part of any manifest format that references other
// content, with the sizes the descriptors declare.
type rawManifest struct {
	Config    *descriptor  `json:"config"`
	Layers    []descriptor `json:"layers"`
	Blobs     []descriptor `json:"blobs"`
	Manifests []descriptor `json:"manifests"`
	Subject   *descriptor  `json:"subject"`
	MediaType string       `json:"mediaType"`
}

type descriptor struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

// node is one manifest as the state builder saw it.
type node struct {
	size     int64 // the manifest's own bytes
	children []digest.Digest
	subject  digest.Digest
	blobs    map[digest.Digest]int64
	found    bool // the upstream still has it
}

// repoState gathers the policy.RepoState of repo. seen holds first-seen
// times of untagged manifests and is updated.
func (r *Runner) repoState(ctx context.Context, repo string, now time.Time, seen map[string]time.Time) (policy.RepoState, error) {
	st := policy.RepoState{Repository: repo}
	bindings, err := r.ledger.Bindings(ctx, repo)
	if err != nil {
		return st, fmt.Errorf("bindings of %s: %w", repo, err)
	}
	upTags, err := r.up.UpstreamTags(ctx, repo)
	if err != nil {
		return st, fmt.Errorf("tags of %s: %w", repo, err)
	}
	recorded, err := r.ledger.Manifests(ctx, repo)
	if err != nil {
		return st, fmt.Errorf("manifests of %s: %w", repo, err)
	}
	pulls, err := r.ledger.LastPulls(ctx, repo)
	if err != nil {
		return st, fmt.Errorf("pulls of %s: %w", repo, err)
	}

	nodes := map[digest.Digest]*node{}
	var queue []digest.Digest
	want := func(d digest.Digest) {
		if _, ok := nodes[d]; !ok && d != "" {
			nodes[d] = nil
			queue = append(queue, d)
		}
	}
	known := map[string]bool{}
	for _, b := range bindings {
		known[b.Tag] = true
		configured, _ := r.im.ModeFor(repo, b.Tag)
		st.Tags = append(st.Tags, policy.TagState{Tag: b.Tag, Digest: b.Digest, PushedAt: b.PushedAt,
			Mode: policy.Effective(configured, b.Mode), LastPulled: pulls[b.Digest], Deleted: b.Deleted})
		if !b.Deleted {
			want(b.Digest)
		}
	}
	for _, m := range recorded {
		want(m.Digest)
	}
	// Tags the upstream has and the ledger never recorded: their push
	// time is unknown, so the plan keeps them.
	for _, tag := range upTags {
		if known[tag] {
			continue
		}
		body, _, found, err := r.up.UpstreamManifest(ctx, repo, tag)
		if err != nil {
			return st, fmt.Errorf("manifest %s:%s: %w", repo, tag, err)
		}
		if !found {
			continue
		}
		d := digest.FromBytes(body)
		configured, _ := r.im.ModeFor(repo, tag)
		st.Tags = append(st.Tags, policy.TagState{Tag: tag, Digest: d, Mode: configured, LastPulled: pulls[d]})
		want(d)
	}
	// The whole graph, however deep: each manifest is read once, so a
	// cycle ends the walk, and what the plan does not know it keeps.
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		n, err := r.node(ctx, repo, d)
		if err != nil {
			return st, err
		}
		nodes[d] = n
		for _, c := range append(slices.Clone(n.children), n.subject) {
			want(c)
		}
	}

	// A blob counts towards a manifest's size when no other manifest of
	// the repository uses it.
	uses := map[digest.Digest]int{}
	for _, n := range nodes {
		if n == nil || !n.found {
			continue
		}
		for b := range n.blobs {
			uses[b]++
		}
	}
	live := map[digest.Digest]bool{}
	for _, t := range st.Tags {
		if !t.Deleted {
			live[t.Digest] = true
		}
	}
	keys := make([]digest.Digest, 0, len(nodes))
	for d := range nodes {
		keys = append(keys, d)
	}
	slices.Sort(keys)
	for _, d := range keys {
		n := nodes[d]
		if n == nil || !n.found {
			continue
		}
		size := n.size
		for b, s := range n.blobs {
			if uses[b] == 1 {
				size += s
			}
		}
		ms := policy.ManifestState{Digest: d, Size: size, Children: n.children, Subject: n.subject, LastPulled: pulls[d]}
		if !live[d] {
			k := repo + "@" + d.String()
			if _, ok := seen[k]; !ok {
				seen[k] = now
			}
			ms.FirstSeen = seen[k]
		}
		st.Manifests = append(st.Manifests, ms)
	}
	return st, nil
}

// node reads manifest d of repo from the upstream, and records it in the
// ledger when the ledger lacks it.
func (r *Runner) node(ctx context.Context, repo string, d digest.Digest) (*node, error) {
	body, mediaType, found, err := r.up.UpstreamManifest(ctx, repo, d.String())
	if err != nil {
		return nil, fmt.Errorf("manifest %s@%s: %w", repo, d, err)
	}
	if !found {
		return &node{}, nil
	}
	if got := d.Algorithm().FromBytes(body); got != d {
		return nil, fmt.Errorf("manifest %s@%s: the upstream returned content with digest %s", repo, d, got)
	}
	var m rawManifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("manifest %s@%s does not parse: %w", repo, d, err)
	}
	n := &node{size: int64(len(body)), blobs: map[digest.Digest]int64{}, found: true}
	rec := storage.Manifest{Repo: repo, Digest: d, MediaType: m.MediaType, Size: n.size}
	if rec.MediaType == "" {
		rec.MediaType = mediaType
	}
	addBlob := func(x descriptor) {
		if x.Digest.Validate() == nil {
			n.blobs[x.Digest] = x.Size
			rec.Blobs = append(rec.Blobs, x.Digest)
		}
	}
	if m.Config != nil {
		addBlob(*m.Config)
	}
	for _, l := range m.Layers {
		addBlob(l)
	}
	for _, b := range m.Blobs {
		addBlob(b)
	}
	for _, c := range m.Manifests {
		if c.Digest.Validate() == nil {
			n.children = append(n.children, c.Digest)
		}
	}
	rec.Children = n.children
	if m.Subject != nil && m.Subject.Digest.Validate() == nil {
		n.subject = m.Subject.Digest
		rec.Subject = n.subject
	}
	if _, err := r.ledger.Manifest(ctx, repo, d); err != nil {
		if err := r.ledger.PutManifest(ctx, rec); err != nil {
			r.log.Warn().Err(err).Str("repo", repo).Str("digest", d.String()).Msg("could not record manifest references")
		}
	}
	return n, nil
}
