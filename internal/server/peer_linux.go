package server

import (
	"fmt"
	"net"
	"os/user"
	"strconv"
	"syscall"
)

// peerCaller names the process at the other end of an admin socket
// connection by the credentials the kernel recorded when it connected.
func peerCaller(c net.Conn) string {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "admin socket"
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "admin socket"
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return "admin socket"
	}
	name := strconv.Itoa(int(cred.Uid))
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	return fmt.Sprintf("%s (uid %d, pid %d) on the admin socket", name, cred.Uid, cred.Pid)
}
