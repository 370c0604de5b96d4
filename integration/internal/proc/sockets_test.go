package proc

import "testing"

// TestListeners ensures a process's listening address is found among the
// sockets of /proc/<pid>/net/tcp: only LISTEN sockets the process holds, on
// 127.0.0.1.
func TestListeners(t *testing.T) {
	t.Parallel()
	const netTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A1B2 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1389 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:A1B2 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 20 4 30 10 -1
   3: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 100 0 0 10 0
`
	got, err := listeners(netTCP, map[string]bool{"1111": true, "3333": true, "4444": true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "127.0.0.1:41394" {
		t.Errorf("listeners = %q, want [127.0.0.1:41394]", got)
	}
}
