/*
** serialize.h: the codec (floor 1), `require "host.serialize"`. The pools
** and other bindings use its C API, which is public and declared in
** host.h: host_codec_encode, host_codec_decode, host_codec_register_udata.
*/
#ifndef HOST_SERIALIZE_H
#define HOST_SERIALIZE_H

#include "util.h"

int luaopen_host_serialize(lua_State *L);

/*
** host_codec_encode for a caller that names each value itself (the pools:
** "argument #2", "the result"). When a value cannot be serialized, *where
** is its position among the n (1..n) and the message gives the path inside
** it, "cannot serialize thread at [2] (coroutine)", or none for that value
** itself, "cannot serialize thread (coroutine)"; so is a userdata whose
** registered dump raises or returns no string. *where is 0 after any other
** failure (memory) and on success.
*/
int host_codec_encode_at(lua_State *L, int first, int n, char **buf, size_t *len,
                         int *where);

#endif
