/*
** serialize.h: the codec (floor 1), `require "host.serialize"`. The pools
** and other bindings use its C API, which is public and declared in
** host.h: host_codec_encode, host_codec_decode, host_codec_register_udata.
*/
#ifndef HOST_SERIALIZE_H
#define HOST_SERIALIZE_H

#include "util.h"

int luaopen_host_serialize(lua_State *L);

#endif
