//! The generated protobuf and gRPC code of `proto/coalition/v1`, and nothing else: the server
//! (`coalition-grpc`) and the partner client (`coalition-client`) share these types, so the
//! client needs neither the engine nor the storage.

/// The generated protobuf and gRPC code of `proto/coalition/v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("coalition.v1");

    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("coalition_descriptor");
}
