// SPDX-License-Identifier: MIT

package agenttest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// CPUTime is a process's user + system time, from /proc/PID/stat: what a
// benchmark charges the agent for, measured by the kernel.
func CPUTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command, which may hold spaces, in parentheses.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	const clkTck = 100 // USER_HZ, fixed by the kernel's ABI
	return time.Duration(utime+stime) * time.Second / clkTck, nil
}
