{{/* The chart name, or nameOverride. */}}
{{- define "chainop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name: fullnameOverride, else "<release>" when it holds the chart name, else "<release>-<chart>". */}}
{{- define "chainop.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "chainop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "chainop.labels" -}}
helm.sh/chart: {{ include "chainop.chart" . }}
{{ include "chainop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chainop
{{- end -}}

{{/* Labels that select the operator pods (never change them on upgrade). */}}
{{- define "chainop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chainop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "chainop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chainop.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "chainop.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Whether kopf peering is on: more than one replica. */}}
{{- define "chainop.peering" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{/*
Fail early on combinations that cannot work (rendered by every template that needs them).
*/}}
{{- define "chainop.validate" -}}
{{- $globs := list -}}
{{- range .Values.watchNamespaces -}}
{{- if regexMatch "[*?\\[!]" . -}}{{- $globs = append $globs . -}}{{- end -}}
{{- end -}}
{{- if and .Values.rbac.namespaced (empty .Values.watchNamespaces) -}}
{{- fail "rbac.namespaced=true needs watchNamespaces: the namespaces to create Roles in (e.g. --set 'watchNamespaces={team-a,team-b}')" -}}
{{- end -}}
{{- if and .Values.rbac.namespaced $globs -}}
{{- fail (printf "rbac.namespaced=true needs exact namespace names, not globs: %s (use rbac.namespaced=false for globs)" (join ", " $globs)) -}}
{{- end -}}
{{- if and (include "chainop.peering" .) $globs -}}
{{- fail (printf "replicaCount > 1 needs a kopf peering object in every watched namespace, which the chart cannot create for globs: %s" (join ", " $globs)) -}}
{{- end -}}
{{- end -}}
