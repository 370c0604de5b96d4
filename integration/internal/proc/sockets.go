package proc

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Listening returns the 127.0.0.1 addresses on which process pid listens.
func Listening(pid int) ([]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	tcp, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil, err
	}
	return listeners(string(tcp), inodes)
}

// listeners returns the "127.0.0.1:PORT" addresses of the IPv4 sockets in
// LISTEN state in netTCP (the text of /proc/<pid>/net/tcp) whose inode is in
// inodes, the sockets one process holds. Sockets on other addresses are
// left out.
func listeners(netTCP string, inodes map[string]bool) ([]string, error) {
	var addrs []string
	for line := range strings.Lines(netTCP) {
		f := strings.Fields(line)
		if len(f) < 10 || f[0] == "sl" {
			continue
		}
		const listen = "0A"
		if f[3] != listen || !inodes[f[9]] {
			continue
		}
		ip, port, ok := strings.Cut(f[1], ":")
		if !ok {
			return nil, fmt.Errorf("local address %q", f[1])
		}
		p, err := strconv.ParseUint(port, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("local port %q: %w", port, err)
		}
		const loopback = "0100007F" // 127.0.0.1, little-endian
		if ip == loopback {
			addrs = append(addrs, "127.0.0.1:"+strconv.FormatUint(p, 10))
		}
	}
	slices.Sort(addrs)
	return addrs, nil
}
