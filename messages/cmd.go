package messages

import "strconv"

// Cmd is a frame's command code.
type Cmd uint8

// Command codes of protocol version 1.
const (
	CmdLogin         Cmd = 0x01
	CmdLoginAck      Cmd = 0x02
	CmdLogout        Cmd = 0x03
	CmdLogoutAck     Cmd = 0x04
	CmdKeepalive     Cmd = 0x05
	CmdKeepaliveAck  Cmd = 0x06
	CmdKickout       Cmd = 0x07
	CmdC2S           Cmd = 0x10
	CmdC2SAck        Cmd = 0x11
	CmdS2C           Cmd = 0x20
	CmdS2CAck        Cmd = 0x21
	CmdC2C           Cmd = 0x30
	CmdC2CAck        Cmd = 0x31
	CmdC2CPush       Cmd = 0x32
	CmdC2CPushAck    Cmd = 0x33
	CmdC2CPushAckAck Cmd = 0x34
	CmdPull          Cmd = 0x40
	CmdPullAck       Cmd = 0x41
	CmdError         Cmd = 0x7F
)

// direction bits of cmdInfo.
const (
	fromClient = 1 << iota
	fromServer
)

type cmdInfo struct {
	name string
	dir  uint8
}

var cmds = [256]cmdInfo{
	CmdLogin:         {"LOGIN", fromClient},
	CmdLoginAck:      {"LOGIN_ACK", fromServer},
	CmdLogout:        {"LOGOUT", fromClient},
	CmdLogoutAck:     {"LOGOUT_ACK", fromServer},
	CmdKeepalive:     {"KEEPALIVE", fromClient},
	CmdKeepaliveAck:  {"KEEPALIVE_ACK", fromServer},
	CmdKickout:       {"KICKOUT", fromServer},
	CmdC2S:           {"C2S", fromClient},
	CmdC2SAck:        {"C2S_ACK", fromServer},
	CmdS2C:           {"S2C", fromServer},
	CmdS2CAck:        {"S2C_ACK", fromClient},
	CmdC2C:           {"C2C", fromClient},
	CmdC2CAck:        {"C2C_ACK", fromServer},
	CmdC2CPush:       {"C2C_PUSH", fromServer},
	CmdC2CPushAck:    {"C2C_PUSH_ACK", fromClient},
	CmdC2CPushAckAck: {"C2C_PUSH_ACK_ACK", fromServer},
	CmdPull:          {"PULL", fromClient},
	CmdPullAck:       {"PULL_ACK", fromServer},
	CmdError:         {"ERROR", fromServer},
}

// Known reports whether c is a command of the protocol.
func (c Cmd) Known() bool { return cmds[c].dir != 0 }

// FromClient reports whether clients send c.
func (c Cmd) FromClient() bool { return cmds[c].dir&fromClient != 0 }

// FromServer reports whether the server sends c.
func (c Cmd) FromServer() bool { return cmds[c].dir&fromServer != 0 }

// String returns the protocol's name of c, or its code in hex.
func (c Cmd) String() string {
	if n := cmds[c].name; n != "" {
		return n
	}
	return "0x" + strconv.FormatUint(uint64(c), 16)
}

// Cmds returns every command of the protocol in code order.
func Cmds() []Cmd {
	var out []Cmd
	for i := range cmds {
		if cmds[i].dir != 0 {
			out = append(out, Cmd(i))
		}
	}
	return out
}
