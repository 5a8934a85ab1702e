{{/*
The ferry pod, shared by the StatefulSet (file store) and the Deployment (etcd store).
*/}}
{{- define "ferry.podTemplate" -}}
metadata:
  annotations:
    # A config change that ferry cannot apply while running rolls the pods; flows and throttles reach the running
    # members through the mounted ConfigMap instead (ferry reloads them). See restartOnConfigChange.
    checksum/config: {{ include "ferry.restartChecksum" . }}
    {{- with omit .Values.podAnnotations "checksum/config" }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- /* merge keeps the first map's value on a clash: a pod label never unselects the pod. */}}
    {{- merge (include "ferry.labels" . | fromYaml) .Values.podLabels | toYaml | nindent 4 }}
spec:
  serviceAccountName: {{ include "ferry.serviceAccountName" . }}
  # ferry never talks to the Kubernetes API.
  automountServiceAccountToken: false
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # SIGTERM: ferry drains for up to 20 s, writes the final checkpoint{{ if include "ferry.etcd" . }}, releases its tasks{{ end }} and exits 0.
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ferry
      image: {{ include "ferry.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      # The image's ENTRYPOINT and CMD, spelled out so that an image built otherwise (without that ENTRYPOINT) runs
      # ferry too; tests/chart.rs keeps both equal to the repository's Dockerfile.
      command:
        - ferry
      args:
        - run
        - --config
        - /etc/ferry/config/ferry.yaml
      {{- if not (include "ferry.etcd" .) }}
      workingDir: {{ .Values.persistence.mountPath }}
      {{- end }}
      env:
        - name: FERRY_LOG_FORMAT
          value: {{ .Values.logFormat | quote }}
        {{- with .Values.logLevel }}
        - name: RUST_LOG
          value: {{ . | quote }}
        {{- end }}
        # Owned by the chart; the environment overrides the config file.
        - name: FERRY_HTTP__LISTEN
          value: {{ printf "0.0.0.0:%v" .Values.service.port | quote }}
        # The address other members reach this one's HTTP endpoint at (ferry advertises POD_IP:<port> in etcd).
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        {{- if and (include "ferry.etcd" .) .Values.checkpoint.etcd.password.secretName }}
        # The config reads it as `password: { env: FERRY_ETCD_PASSWORD }`.
        - name: FERRY_ETCD_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ .Values.checkpoint.etcd.password.secretName }}
              key: {{ .Values.checkpoint.etcd.password.key }}
        {{- end }}
        {{- with .Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.service.port }}
          protocol: TCP
      {{- if .Values.startupProbe.enabled }}
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        {{- omit .Values.startupProbe "enabled" | toYaml | nindent 8 }}
      {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        # A directory, not a subPath: kubelet updates it when the ConfigMap changes, and ferry picks the change up.
        # /etc/ferry itself stays a plain directory, so Secrets can be mounted beside it (secretMounts).
        - name: config
          mountPath: /etc/ferry/config
          readOnly: true
        {{- if not (include "ferry.etcd" .) }}
        - name: data
          mountPath: {{ .Values.persistence.mountPath }}
        {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- if and (include "ferry.etcd" .) .Values.checkpoint.etcd.tls.secretName }}
        - name: etcd-tls
          mountPath: {{ include "ferry.etcdTlsDir" . }}
          readOnly: true
        {{- end }}
        {{- range .Values.secretMounts }}
        - name: {{ printf "secret-%s" .name }}
          mountPath: {{ .mountPath }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "ferry.fullname" . }}
    - name: tmp
      emptyDir: {}
    {{- if and (include "ferry.etcd" .) .Values.checkpoint.etcd.tls.secretName }}
    - name: etcd-tls
      secret:
        secretName: {{ .Values.checkpoint.etcd.tls.secretName }}
        defaultMode: 288 # 0440
    {{- end }}
    {{- range .Values.secretMounts }}
    - name: {{ printf "secret-%s" .name }}
      secret:
        secretName: {{ .secretName }}
        defaultMode: 288 # 0440
    {{- end }}
    {{- if and (not (include "ferry.etcd" .)) (not .Values.persistence.enabled) }}
    # persistence.enabled=false: checkpoints are lost with the pod; for throwaway test clusters only.
    - name: data
      emptyDir: {}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if eq .Values.podAntiAffinity "soft" }}
  # Spread ferry members over nodes when possible.
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "ferry.selectorLabels" . | nindent 16 }}
  {{- else if eq .Values.podAntiAffinity "hard" }}
  # Never two ferry members of this release on one node.
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "ferry.selectorLabels" . | nindent 14 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
