package config

import (
	"strings"
	"testing"
)

// TestAdminSocket ensures the admin socket defaults to taglock.sock in the
// data directory, that admin.socket and admin.group load, and that a path
// too long for a Unix socket, a bad group and unknown keys are refused with
// their line.
func TestAdminSocket(t *testing.T) {
	t.Parallel()
	long := "/" + strings.Repeat("d", MaxSocketDir)
	tests := []struct {
		yaml, socket, group, err string
	}{
		{"", "taglock-data/taglock.sock", "", ""},
		{"data: /var/lib/taglock\n", "/var/lib/taglock/taglock.sock", "", ""},
		{"admin:\n  socket: /run/taglock/admin.sock\n  group: taglock\n", "/run/taglock/admin.sock", "taglock", ""},
		{"admin:\n  group: \"1001\"\n", "taglock-data/taglock.sock", "1001", ""},
		{"admin:\n  socket: /run/" + strings.Repeat("s", MaxSocketPath) + "\n", "", "", "t.yaml:2: admin.socket: "},
		{"data: " + long + "\n", "", "", "t.yaml: admin.socket: the directory of"},
		{"admin:\n  group: \"a b\"\n", "", "", "t.yaml:2: admin.group: want a group name"},
		{"admin:\n  mode: \"0666\"\n", "", "", "t.yaml:2: unknown key \"mode\""},
	}
	for _, tc := range tests {
		t.Run(tc.yaml, func(t *testing.T) {
			cfg, err := Parse("t.yaml", strings.NewReader(tc.yaml))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.AdminSocket(); got != tc.socket || cfg.Admin.Group != tc.group {
				t.Errorf("socket %q, group %q; want %q, %q", got, cfg.Admin.Group, tc.socket, tc.group)
			}
		})
	}
}
