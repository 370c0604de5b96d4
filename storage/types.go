package storage

import (
	"time"

	digest "github.com/opencontainers/go-digest"
)

// Modes a binding can be recorded with. They are the policy's vocabulary; the
// ledger only treats ModeImmutable specially (see Reserve).
const (
	// ModeImmutable tags never move and keep their binding after deletion.
	ModeImmutable = "immutable"
	// ModeMutable tags may move freely.
	ModeMutable = "mutable"
	// ModeWarn tags may move, but moves are recorded as warnings.
	ModeWarn = "warn"
)

// Binding is what the ledger knows about one tag.
type Binding struct {
	Repo      string        `json:"repo"`
	Tag       string        `json:"tag"`
	Digest    digest.Digest `json:"digest"` // the bound digest
	MediaType string        `json:"mediaType,omitempty"`
	Size      int64         `json:"size"`
	Mode      string        `json:"mode"`              // "immutable" | "mutable" | "warn": the policy mode in force when bound
	Rule      string        `json:"rule,omitempty"`    // the rule that decided the mode when bound
	PushedAt  time.Time     `json:"pushedAt"`          // when Digest was first bound to this tag
	PushedBy  string        `json:"pushedBy"`          // identity that first bound it ("anonymous" when none)
	Deleted   bool          `json:"deleted,omitempty"` // tombstone: the tag was deleted upstream; the binding stays
	DeletedAt time.Time     `json:"deletedAt,omitzero"`
	// Closure is every digest the manifest references: child manifests of
	// an index and all blobs (config, layers) of it and its children. It
	// never includes Digest itself; the ledger drops it, and duplicates,
	// when storing.
	Closure []digest.Digest `json:"closure,omitempty"`
	// Manifest is the raw manifest, kept for immutable bindings (may be nil).
	Manifest []byte `json:"manifest,omitempty"`
}

// EventKind names what happened in a history Event.
type EventKind string

// Event kinds.
const (
	EventAccepted  EventKind = "accepted"  // a tag was bound for the first time
	EventIdentical EventKind = "identical" // a tag was pushed again with its bound digest
	EventMoved     EventKind = "moved"     // a mutable tag was bound to another digest
	EventRefused   EventKind = "refused"   // a request was refused
	EventDeleted   EventKind = "deleted"   // a tag or manifest was deleted
	EventAdopted   EventKind = "adopted"   // a tag found upstream was recorded
	EventWarned    EventKind = "warned"    // a warn-mode tag moved
	EventReleased  EventKind = "released"  // a reservation was given up
	EventRestored  EventKind = "restored"  // a tombstoned tag was bound again
)

// Event is one append-only history entry. Seq is assigned by the ledger
// (global, strictly increasing).
type Event struct {
	Seq       uint64        `json:"seq"`
	Time      time.Time     `json:"time"`
	Kind      EventKind     `json:"kind"`
	Repo      string        `json:"repo"`
	Tag       string        `json:"tag,omitempty"`
	Digest    digest.Digest `json:"digest,omitempty"`   // the digest the request carried (attempted digest for refusals)
	Previous  digest.Digest `json:"previous,omitempty"` // the binding before the event, when there was one
	User      string        `json:"user,omitempty"`
	Rule      string        `json:"rule,omitempty"`
	Reason    string        `json:"reason,omitempty"` // machine-readable reason, e.g. "immutable-tag-moved"
	Message   string        `json:"message,omitempty"`
	RequestID string        `json:"requestId,omitempty"`
}

// Reservation holds tags for one in-flight manifest push. It is persisted, so
// it survives a crash.
type Reservation struct {
	ID        string        `json:"id"` // assigned by Reserve (random, 16 bytes hex)
	Repo      string        `json:"repo"`
	Tags      []string      `json:"tags"`
	Digest    digest.Digest `json:"digest"`
	CreatedAt time.Time     `json:"createdAt"`
	// Expect maps each tag to the binding digest the caller saw when it
	// decided ("" or absent = no live binding). Only Reserve acts on it.
	Expect map[string]digest.Digest `json:"expect,omitempty"`
}

// Manifest records what a manifest references, so deletes and retention can
// see the graph without the upstream.
type Manifest struct {
	Repo         string          `json:"repo"`
	Digest       digest.Digest   `json:"digest"`
	MediaType    string          `json:"mediaType,omitempty"`
	Size         int64           `json:"size"`
	Children     []digest.Digest `json:"children,omitempty"` // index entries (child manifests)
	Blobs        []digest.Digest `json:"blobs,omitempty"`    // config, layers, artifact blobs
	Subject      digest.Digest   `json:"subject,omitempty"`  // OCI subject (referrers)
	ArtifactType string          `json:"artifactType,omitempty"`
}

// Pull is one observed pull of a manifest.
type Pull struct {
	Repo   string        `json:"repo"`
	Digest digest.Digest `json:"digest"`
	At     time.Time     `json:"at"`
}

// ImportStats counts the records Import read, by type.
type ImportStats struct {
	Bindings     int `json:"bindings"`
	Events       int `json:"events"`
	Manifests    int `json:"manifests"`
	Pulls        int `json:"pulls"`
	Reservations int `json:"reservations"`
}
